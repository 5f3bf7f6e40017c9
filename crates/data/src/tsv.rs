//! Tab-separated files with a header line, read strictly: a row with the wrong number of
//! fields is an error naming the file and line. Fields are taken verbatim (GLUE's files are
//! unquoted; quote characters are text).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub(crate) struct Tsv {
    pub path: PathBuf,
    pub header: Vec<String>,
    /// `(line number, fields)`, line numbers counting the header as line 1.
    pub rows: Vec<(usize, Vec<String>)>,
}

impl Tsv {
    pub fn read(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let mut lines = text.lines().enumerate();
        let Some((_, header)) = lines.next() else {
            bail!("{} is empty: expected a header line", path.display());
        };
        let header: Vec<String> = header.split('\t').map(|s| s.trim().to_string()).collect();
        let mut rows = Vec::new();
        for (index, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let fields: Vec<String> = line.split('\t').map(str::to_string).collect();
            if fields.len() != header.len() {
                bail!(
                    "{}:{}: expected {} tab-separated fields ({}), found {}",
                    path.display(),
                    index + 1,
                    header.len(),
                    header.join(", "),
                    fields.len()
                );
            }
            rows.push((index + 1, fields));
        }
        Ok(Self {
            path: path.to_path_buf(),
            header,
            rows,
        })
    }

    /// The index of a named column; the error lists the columns there are.
    pub fn column(&self, name: &str) -> Result<usize> {
        header_column(&self.path.display().to_string(), &self.header, name)
    }
}

/// The index of column `name` in the header of `source`; the error lists the columns there are.
pub fn header_column(source: &str, header: &[impl AsRef<str>], name: &str) -> Result<usize> {
    let header: Vec<&str> = header.iter().map(AsRef::as_ref).collect();
    header.iter().position(|h| *h == name).with_context(|| {
        format!(
            "{source}: no column {name:?} in the header (columns: {})",
            header.join(", ")
        )
    })
}

/// A whole text file; invalid UTF-8 is an error naming the file and the line.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).map_err(|error| {
        let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: not valid UTF-8", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_names_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.tsv");
        std::fs::write(&path, b"sentence\tlabel\nfine\t1\nbad \xff\t0\n").unwrap();
        let error = Tsv::read(&path).err().unwrap().to_string();
        assert!(error.ends_with("train.tsv:3: not valid UTF-8"), "{error}");
    }
}

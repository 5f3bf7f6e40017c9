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
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
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
        self.header.iter().position(|h| h == name).with_context(|| {
            format!(
                "{}: no column {name:?} in the header (columns: {})",
                self.path.display(),
                self.header.join(", ")
            )
        })
    }
}

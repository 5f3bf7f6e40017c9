//! Safetensors files that carry a CRC-32 of their tensors (`kd_crc32` in the metadata), for
//! the files kd writes to read back itself (checkpoints, optimizer states, teacher and token
//! caches): a truncated or altered file is an error naming it, never used.

use crate::params::write_atomically;
use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use safetensors::{SafeTensors, View};
use std::collections::HashMap;
use std::path::Path;

const CHECKSUM_KEY: &str = "kd_crc32";

/// The CRC-32 of the metadata (but the checksum) and of every tensor's name, dtype, shape and
/// bytes, in name order.
fn checksum<'a, V: View + 'a>(
    metadata: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, V)>,
) -> u32 {
    let mut tensors: Vec<(&str, V)> = tensors.collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = crc32fast::Hasher::new();
    let mut entries: Vec<_> = metadata
        .iter()
        .filter(|(k, _)| *k != CHECKSUM_KEY)
        .collect();
    entries.sort();
    hasher.update(format!("{entries:?}").as_bytes());
    for (name, tensor) in &tensors {
        hasher.update(name.as_bytes());
        hasher.update(format!("{:?}{:?}", tensor.dtype(), tensor.shape()).as_bytes());
        hasher.update(&tensor.data());
    }
    hasher.finalize()
}

/// Writes `tensors` with `metadata` and their checksum to `path`, atomically.
pub fn write_checked(
    path: &Path,
    tensors: &[(String, Tensor)],
    mut metadata: HashMap<String, String>,
) -> Result<()> {
    let sum = checksum(
        &metadata,
        tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)),
    );
    metadata.insert(CHECKSUM_KEY.into(), sum.to_string());
    write_atomically(path, |tmp| {
        let views = tensors.iter().map(|(name, tensor)| (name.as_str(), tensor));
        safetensors::tensor::serialize_to_file(views, Some(metadata), tmp)?;
        Ok(())
    })
}

/// What [`read_checked`] read.
pub struct CheckedFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
    /// Whether the file had a checksum (it matched); files of earlier kd versions have none,
    /// and a cache then computes its contents again rather than trust them.
    pub verified: bool,
}

/// Reads what [`write_checked`] wrote. A file that does not parse, or whose checksum differs,
/// is an error that names it and says what to do (`remedy`).
pub fn read_checked(path: &Path, remedy: &str) -> Result<CheckedFile> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: kd's own files, replaced only by atomic renames, never modified in place.
    let bytes = unsafe { memmap2::Mmap::map(&file) }
        .with_context(|| format!("cannot read {}", path.display()))?;
    let corrupt =
        |what: String| anyhow::anyhow!("{} is corrupt ({what}): {remedy}", path.display());
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let parsed = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let verified = match metadata.get(CHECKSUM_KEY) {
        Some(expected) => {
            let views = parsed.tensors();
            let actual = checksum(
                &metadata,
                views.iter().map(|(name, view)| (name.as_str(), view)),
            );
            if expected != &actual.to_string() {
                bail!(corrupt(format!("checksum {actual}, written as {expected}")));
            }
            true
        }
        None => false,
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(CheckedFile {
        tensors,
        metadata,
        verified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_or_flipped_files_are_refused_with_the_remedy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.safetensors");
        let tensors = vec![
            (
                "b".to_string(),
                Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap(),
            ),
            (
                "a".to_string(),
                Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap(),
            ),
        ];
        let metadata = HashMap::from([("steps".to_string(), "7".to_string())]);
        write_checked(&path, &tensors, metadata).unwrap();
        let read = read_checked(&path, "delete it").unwrap();
        assert!(read.verified);
        assert_eq!(read.metadata["steps"], "7");
        assert_eq!(read.tensors["b"].to_vec1::<f32>().unwrap()[63], 63.0);
        let good = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            let error = read_checked(&path, "delete it").err().unwrap().to_string();
            assert!(
                error.contains("is corrupt") && error.ends_with("delete it"),
                "{error}"
            );
        };
        // Every single-bit flip in the metadata's values and the data, and every truncation,
        // is caught.
        let steps = good.windows(3).position(|w| w == b"\"7\"").unwrap() + 1;
        let data_start = good.len() - 64 * 4 - 3 * 4;
        for byte in std::iter::once(steps).chain(data_start..good.len()) {
            let mut flipped = good.clone();
            flipped[byte] ^= 1 << (byte % 8);
            refused(&flipped);
        }
        for length in [0, 7, 8, 100, good.len() - 1] {
            refused(&good[..length]);
        }
        // A file without a checksum (an earlier kd's) reads as unverified.
        let plain = dir.path().join("plain.safetensors");
        let tensor = HashMap::from([("x".to_string(), tensors[0].1.clone())]);
        candle_core::safetensors::save(&tensor, &plain).unwrap();
        assert!(!read_checked(&plain, "rerun").unwrap().verified);
    }
}

//! Incremental gzip decompression of a response body for inspection only (the client gets
//! the original bytes), fed in small slices so one chunk of a compression bomb cannot blow up
//! memory before the inspection limit is checked.

use std::io::Write;

use flate2::write::GzDecoder;

/// Compressed bytes handed to the decoder at a time: 1 KiB. Deflate expands by at most
/// about 1 032 : 1, so one slice yields at most about 1 MiB before its output is handed on.
const GZIP_SLICE_BYTES: usize = 1_024;

/// A streaming gzip decoder.
pub struct Gunzip {
    decoder: GzDecoder<Vec<u8>>,
}

impl std::fmt::Debug for Gunzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gunzip")
    }
}

impl Gunzip {
    /// A decoder at the start of a gzip stream.
    pub fn new() -> Self {
        Self {
            decoder: GzDecoder::new(Vec::new()),
        }
    }

    /// Decompresses `chunk`, handing each piece of output to `out`; `out` returns false to
    /// stop (the inspection limit was reached). An `Err` is a corrupt stream.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut out: impl FnMut(&[u8]) -> bool,
    ) -> std::io::Result<()> {
        for slice in chunk.chunks(GZIP_SLICE_BYTES) {
            self.decoder.write_all(slice)?;
            self.decoder.flush()?;
            let decoded = std::mem::take(self.decoder.get_mut());
            let more = decoded.is_empty() || out(&decoded);
            let mut buffer = decoded;
            buffer.clear();
            *self.decoder.get_mut() = buffer;
            if !more {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl Default for Gunzip {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    #[test]
    fn decodes_across_arbitrary_chunks() {
        let text = b"{\"usage\":{\"prompt_tokens\":1200}}".repeat(100);
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&text).unwrap();
        let compressed = encoder.finish().unwrap();
        let mut gunzip = Gunzip::new();
        let mut decoded = Vec::new();
        for chunk in compressed.chunks(5) {
            gunzip
                .feed(chunk, |piece| {
                    decoded.extend_from_slice(piece);
                    true
                })
                .unwrap();
        }
        assert_eq!(decoded, text);
        assert!(Gunzip::new().feed(b"not gzip at all", |_| true).is_err());
    }
}

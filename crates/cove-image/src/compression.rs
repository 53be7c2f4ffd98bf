//! Layer blobs come as plain tar, gzip or zstd; the bytes' magic decides (registries and
//! `docker save` archives do not always label them right).

use std::io::{self, BufRead, Read};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Looks at the first bytes of `reader` without consuming them.
    pub fn detect(reader: &mut impl BufRead) -> io::Result<Self> {
        let head = reader.fill_buf()?;
        Ok(if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        })
    }

    /// A reader of the uncompressed stream.
    pub fn decoder<'a, R: BufRead + 'a>(self, reader: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(reader),
            // Some tools write a layer as several gzip members; all of them are the layer.
            Self::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Self::Zstd => {
                Box::new(ruzstd::decoding::StreamingDecoder::new(reader).map_err(io::Error::other)?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn detects_and_decodes_gzip_and_plain() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"layer bytes").expect("write");
        let gz = gz.finish().expect("finish");
        for (bytes, kind) in [
            (gz.as_slice(), Compression::Gzip),
            (&b"layer bytes"[..], Compression::None),
        ] {
            let mut reader = io::BufReader::new(bytes);
            assert_eq!(Compression::detect(&mut reader).expect("detect"), kind);
            let mut out = String::new();
            kind.decoder(reader)
                .expect("decoder")
                .read_to_string(&mut out)
                .expect("decode");
            assert_eq!(out, "layer bytes");
        }
    }
}

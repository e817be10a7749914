//! `circ data fetch mnist --to DIR [--mirror URL]`: download and verify MNIST / Fashion-MNIST.
//!
//! Input: a destination directory, an optional mirror base URL, and which dataset.
//! Output: the four gzipped IDX files in the directory, each verified, so that
//! [`crate::data::load_mnist`] can load them.
//!
//! Invariants:
//! - A file is verified *in memory* before it is written, and written atomically, so the
//!   destination never holds a partial or unverified download. A file that fails verification
//!   is not left in place (a stale copy that fails verification is removed too).
//! - MNIST is checked against the md5 of the *decompressed* files (listed in
//!   `../shared/data/README.md`), which does not depend on how a mirror compressed them.
//! - Fashion-MNIST: its publishers list md5s of the gzipped files only, and no authoritative
//!   list of the decompressed md5s was available when this was written, so Fashion downloads
//!   are checked against the published `.gz` md5s (when the mirror serves the original gzip
//!   bytes) plus full IDX structure validation (magic, sizes, label range).
//! - Every file is also structurally validated as IDX (magic, sizes, labels 0..=9).
//! - Files already present and verified are not downloaded again.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use miette::Diagnostic;
use thiserror::Error;

use crate::atomic::write_atomic;
use crate::data::{parse_idx_bytes, DataError, IdxKind, MNIST_FILES};

/// Default MNIST mirror (Google's copy of the original files, HTTPS).
pub const MNIST_MIRROR: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";
/// Default Fashion-MNIST mirror (Zalando's S3 website; plain HTTP only, so the md5 checks are
/// what guarantees integrity).
pub const FASHION_MIRROR: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";

/// Largest body accepted from a mirror: the biggest file (Fashion train images) is 26 MB.
const MAX_DOWNLOAD: u64 = 128 << 20;
/// Largest decompressed IDX file accepted: MNIST train images are 47 MB.
const MAX_DECOMPRESSED: u64 = 256 << 20;

/// Checksums known for one file.
struct Known {
    name: &'static str,
    kind: IdxKind,
    /// md5 of the decompressed IDX file.
    raw_md5: Option<&'static str>,
    /// md5 of the gzipped file as published.
    gz_md5: Option<&'static str>,
}

const MNIST_KNOWN: [Known; 4] = [
    Known { name: MNIST_FILES[0], kind: IdxKind::Images, raw_md5: Some("6bbc9ace898e44ae57da46a324031adb"), gz_md5: None },
    Known { name: MNIST_FILES[1], kind: IdxKind::Labels, raw_md5: Some("a25bea736e30d166cdddb491f175f624"), gz_md5: None },
    Known { name: MNIST_FILES[2], kind: IdxKind::Images, raw_md5: Some("2646ac647ad5339dbf082846283269ea"), gz_md5: None },
    Known { name: MNIST_FILES[3], kind: IdxKind::Labels, raw_md5: Some("27ae3e4e09519cfbb04c329615203637"), gz_md5: None },
];

/// Published by Zalando Research in the Fashion-MNIST README (md5 of the `.gz` files).
const FASHION_KNOWN: [Known; 4] = [
    Known { name: MNIST_FILES[0], kind: IdxKind::Images, raw_md5: None, gz_md5: Some("8d4fb7e6c68d591d4c3dfef9ec88bf0d") },
    Known { name: MNIST_FILES[1], kind: IdxKind::Labels, raw_md5: None, gz_md5: Some("25c81989df183df01b3e8a0aad5dffbe") },
    Known { name: MNIST_FILES[2], kind: IdxKind::Images, raw_md5: None, gz_md5: Some("bef4ecab320f06d8554ea6380940ec79") },
    Known { name: MNIST_FILES[3], kind: IdxKind::Labels, raw_md5: None, gz_md5: Some("bb300cfdad3c16e7a12a480ee83cd310") },
];

/// Why a download failed. Every variant names the URL or the destination file.
#[derive(Debug, Error, Diagnostic)]
pub enum FetchError {
    /// The mirror is not an http(s) URL.
    #[error("mirror `{mirror}` is not an http:// or https:// URL")]
    #[diagnostic(
        code(circ::fetch::bad_mirror),
        help("pass a base URL such as `--mirror https://storage.googleapis.com/cvdf-datasets/mnist/`; the file names are appended to it")
    )]
    BadMirror {
        /// The mirror as given.
        mirror: String,
    },

    /// The destination directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    #[diagnostic(code(circ::fetch::create_dir), help("choose a writable location with `--to DIR`"))]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The request failed before a response arrived, or the body could not be read.
    #[error("downloading {url} failed: {detail}")]
    #[diagnostic(
        code(circ::fetch::http),
        help("check the network connection, or use another mirror with `--mirror URL` (or copy the four .gz files into the directory by hand)")
    )]
    Http {
        /// The URL.
        url: String,
        /// The transport error.
        detail: String,
    },

    /// The server answered with a non-success status.
    #[error("downloading {url} failed: HTTP status {status}")]
    #[diagnostic(
        code(circ::fetch::http_status),
        help("the mirror does not serve this file; check the URL or use another mirror with `--mirror URL`")
    )]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },

    /// The download is not a valid gzip stream.
    #[error("{url} (for {}) is not a valid gzip file: {detail}", path.display())]
    #[diagnostic(
        code(circ::fetch::bad_gzip),
        help("the download was damaged or the mirror served something else (an error page?); try again or use another mirror with `--mirror URL`")
    )]
    BadGzip {
        /// The URL.
        url: String,
        /// The destination file (not written).
        path: PathBuf,
        /// The decoder's complaint.
        detail: String,
    },

    /// The download decompresses but is not a valid IDX file.
    #[error("{url} (for {}) is not a valid IDX file: {source}", path.display())]
    #[diagnostic(
        code(circ::fetch::invalid_idx),
        help("the mirror serves a different or damaged file; use another mirror with `--mirror URL`")
    )]
    InvalidIdx {
        /// The URL.
        url: String,
        /// The destination file (not written).
        path: PathBuf,
        /// What the IDX validation found (boxed: it is large and this path is rare).
        #[source]
        source: Box<DataError>,
    },

    /// The content does not have the expected md5.
    #[error("{} from {url} has md5 {actual} ({which}), expected {expected}; the file was not kept", path.display())]
    #[diagnostic(
        code(circ::fetch::md5_mismatch),
        help("the mirror serves different or corrupted data; retry, or use another mirror with `--mirror URL`")
    )]
    Md5Mismatch {
        /// The destination file (not kept).
        path: PathBuf,
        /// The URL.
        url: String,
        /// Which bytes were hashed (`decompressed` or `gzipped`).
        which: &'static str,
        /// The md5 required.
        expected: String,
        /// The md5 found.
        actual: String,
    },

    /// Writing the verified file failed.
    #[error("cannot write {}: {source}", path.display())]
    #[diagnostic(code(circ::fetch::write), help("check free space and permissions of the directory given with `--to DIR`"))]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Downloads the four MNIST (or Fashion-MNIST, when `fashion`) files into `to`, verifying each.
///
/// `mirror` replaces the default base URL ([`MNIST_MIRROR`] / [`FASHION_MIRROR`]). Creates `to`
/// if needed.
pub fn fetch_mnist(to: &Path, mirror: Option<&str>, fashion: bool) -> Result<(), FetchError> {
    fetch_mnist_with(to, mirror, fashion, &mut |_| {})
}

/// Like [`fetch_mnist`], reporting each step (one human-readable line) through `log`.
pub fn fetch_mnist_with(to: &Path, mirror: Option<&str>, fashion: bool, log: &mut dyn FnMut(&str)) -> Result<(), FetchError> {
    let base = mirror.unwrap_or(if fashion { FASHION_MIRROR } else { MNIST_MIRROR });
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(FetchError::BadMirror { mirror: base.to_string() });
    }
    let base = if base.ends_with('/') { base.to_string() } else { format!("{base}/") };
    std::fs::create_dir_all(to).map_err(|source| FetchError::CreateDir { path: to.to_path_buf(), source })?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer fails instead of hanging forever; a slow one still completes.
        .timeout_per_read(Some(Duration::from_secs(60)))
        // Ask for the bytes as stored: the files are already gzip, and transparent decoding
        // would hide the published .gz md5s from us.
        .accept_encoding("identity")
        .http_status_as_error(false)
        .user_agent(concat!("circ/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let known = if fashion { &FASHION_KNOWN } else { &MNIST_KNOWN };
    for k in known {
        let dest = to.join(format!("{}.gz", k.name));
        let url = format!("{base}{}.gz", k.name);
        if dest.is_file() {
            match std::fs::read(&dest) {
                Ok(bytes) if verify(k, &url, &dest, &bytes).is_ok() => {
                    log(&format!("{} already present and verified", dest.display()));
                    continue;
                }
                _ => {
                    // Known bad: remove it so that a failed re-download cannot leave it behind.
                    log(&format!("{} present but fails verification; downloading again", dest.display()));
                    std::fs::remove_file(&dest).map_err(|source| FetchError::Write { path: dest.clone(), source })?;
                }
            }
        }
        log(&format!("downloading {url}"));
        let body = download(&agent, &url)?;
        let gz = if is_gzip(&body) {
            body
        } else {
            // The server decoded it for us (Content-Encoding) or serves raw IDX files: keep the
            // on-disk layout uniform by compressing it ourselves after verification.
            verify(k, &url, &dest, &body)?;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&body).and_then(|_| e.finish()).map_err(|source| FetchError::Write { path: dest.clone(), source })?
        };
        verify(k, &url, &dest, &gz)?;
        write_atomic(&dest, &gz).map_err(|source| FetchError::Write { path: dest.clone(), source })?;
        log(&format!("wrote {} ({} bytes), md5 verified", dest.display(), gz.len()));
    }
    Ok(())
}

fn download(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, FetchError> {
    let http = |e: ureq::Error| FetchError::Http { url: url.to_string(), detail: e.to_string() };
    let mut resp = agent.get(url).call().map_err(http)?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(FetchError::HttpStatus { url: url.to_string(), status });
    }
    resp.body_mut().with_config().limit(MAX_DOWNLOAD).read_to_vec().map_err(http)
}

fn is_gzip(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0x1f && b[1] == 0x8b
}

fn md5_hex(b: &[u8]) -> String {
    format!("{:x}", Md5::digest(b))
}

/// Checks `bytes` (gzipped or raw IDX) for file `k`: gzip integrity, IDX structure, md5s.
fn verify(k: &Known, url: &str, dest: &Path, bytes: &[u8]) -> Result<(), FetchError> {
    let raw_owned;
    let raw: &[u8] = if is_gzip(bytes) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes).take(MAX_DECOMPRESSED + 1).read_to_end(&mut out).map_err(|e| FetchError::BadGzip {
            url: url.to_string(),
            path: dest.to_path_buf(),
            detail: e.to_string(),
        })?;
        if out.len() as u64 > MAX_DECOMPRESSED {
            return Err(FetchError::BadGzip {
                url: url.to_string(),
                path: dest.to_path_buf(),
                detail: format!("decompresses to more than {MAX_DECOMPRESSED} bytes"),
            });
        }
        if let Some(expected) = k.gz_md5 {
            let actual = md5_hex(bytes);
            if actual != expected {
                return Err(FetchError::Md5Mismatch {
                    path: dest.to_path_buf(),
                    url: url.to_string(),
                    which: "gzipped",
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        raw_owned = out;
        &raw_owned
    } else {
        bytes
    };
    parse_idx_bytes(dest, raw, k.kind).map_err(|source| FetchError::InvalidIdx {
        url: url.to_string(),
        path: dest.to_path_buf(),
        source: Box::new(source),
    })?;
    if let Some(expected) = k.raw_md5 {
        let actual = md5_hex(raw);
        if actual != expected {
            return Err(FetchError::Md5Mismatch {
                path: dest.to_path_buf(),
                url: url.to_string(),
                which: "decompressed",
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::tests::scratch_dir;
    use crate::data::{load_mnist, mnist_dir, tests::gzip};
    use std::collections::HashMap;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The real MNIST for the server to serve: `$CIRC_MNIST_DIR`, else `../shared/data/mnist`
    /// beside the workspace; the first that holds all four files (raw or gzipped).
    fn source_dir() -> Option<PathBuf> {
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mnist");
        mnist_dir(None)
            .into_iter()
            .chain([beside])
            .find(|d| MNIST_FILES.iter().all(|n| d.join(format!("{n}.gz")).is_file() || d.join(n).is_file()))
    }

    /// `/NAME.gz` → bytes, from `dir` (gzipping raw files on the fly), with `overrides`.
    fn serve_files(dir: &Path, overrides: HashMap<String, Vec<u8>>) -> HashMap<String, Vec<u8>> {
        let mut files = HashMap::new();
        for name in MNIST_FILES {
            let gz = dir.join(format!("{name}.gz"));
            let bytes = if gz.exists() { std::fs::read(gz).unwrap() } else { gzip(&std::fs::read(dir.join(name)).unwrap()) };
            files.insert(format!("/{name}.gz"), bytes);
        }
        files.extend(overrides);
        files
    }

    /// A minimal HTTP/1.1 server on 127.0.0.1:0, one request per connection, running until
    /// the test process exits. Returns the base URL and a request counter.
    fn start_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                hits2.fetch_add(1, Ordering::SeqCst);
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip headers up to the blank line.
                loop {
                    let mut l = String::new();
                    match reader.read_line(&mut l) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if l == "\r\n" || l == "\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or("/");
                let (status, body): (&str, &[u8]) = match files.get(path) {
                    Some(b) => ("200 OK", b),
                    None => ("404 Not Found", b"not found"),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
                let _ = stream.flush();
            }
        });
        (format!("http://127.0.0.1:{port}/"), hits)
    }

    fn skip() -> Option<PathBuf> {
        let d = source_dir();
        if d.is_none() {
            crate::atomic::tests::skip_loudly("no MNIST (set CIRC_MNIST_DIR to run the fetch tests that need it)");
        }
        d
    }

    #[test]
    fn fetch_from_local_mirror_then_load() {
        let Some(src) = skip() else { return };
        let (url, hits) = start_server(serve_files(&src, HashMap::new()));
        let to = scratch_dir("fetch-ok").join("sub/dir");
        let mut lines = Vec::new();
        fetch_mnist_with(&to, Some(&url), false, &mut |l| lines.push(l.to_string())).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        assert!(lines.iter().any(|l| l.contains("md5 verified")), "{lines:?}");
        let d = load_mnist(&to, false).unwrap();
        assert_eq!((d.train.n, d.test.n), (60000, 10000));
        // A second fetch finds everything verified and downloads nothing.
        fetch_mnist(&to, Some(url.trim_end_matches('/')), false).unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        let mut names: Vec<_> = std::fs::read_dir(&to).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            vec!["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"],
            "only the four files, no temp files"
        );
        std::fs::remove_dir_all(to.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn corrupted_download_is_rejected_and_not_kept() {
        let Some(src) = skip() else { return };
        let mut files = serve_files(&src, HashMap::new());
        // Change one label (7 → 3) and re-gzip: valid gzip, valid IDX, wrong content.
        let key = format!("/{}.gz", MNIST_FILES[3]);
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&files[&key][..]).read_to_end(&mut raw).unwrap();
        assert_eq!(raw[8], 7, "first MNIST test label is a 7");
        raw[8] = 3;
        files.insert(key, gzip(&raw));
        let (url, _) = start_server(files);
        let root = scratch_dir("fetch-bad");
        let err = fetch_mnist(&root, Some(&url), false).unwrap_err();
        let dest = root.join("t10k-labels-idx1-ubyte.gz");
        match &err {
            FetchError::Md5Mismatch { path, expected, actual, which, .. } => {
                assert_eq!(path, &dest);
                assert_eq!(expected, "27ae3e4e09519cfbb04c329615203637");
                assert_ne!(actual, expected);
                assert_eq!(*which, "decompressed");
            }
            _ => panic!("{err:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains(&dest.display().to_string()) && msg.contains("27ae3e4e"), "{msg}");
        assert_eq!(err.code().unwrap().to_string(), "circ::fetch::md5_mismatch");
        assert!(!dest.exists(), "the bad file must not be left in place");
        // The three good files were kept.
        assert!(root.join("t10k-images-idx3-ubyte.gz").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn errors_without_real_data() {
        // These need no MNIST: a 404, a non-gzip body and a bad mirror.
        let mut files = HashMap::new();
        files.insert(format!("/{}.gz", MNIST_FILES[0]), b"<html>moved</html>".to_vec());
        let (url, _) = start_server(files);
        let root = scratch_dir("fetch-errs");
        let err = fetch_mnist(&root, Some(&url), false).unwrap_err();
        // The body is not gzip, so it is validated as raw IDX and rejected.
        assert!(matches!(err, FetchError::InvalidIdx { .. }), "{err:?}");
        assert!(err.to_string().contains("train-images-idx3-ubyte.gz"));

        let (url404, _) = start_server(HashMap::new());
        let err = fetch_mnist(&root, Some(&url404), true).unwrap_err();
        assert!(matches!(err, FetchError::HttpStatus { status: 404, .. }), "{err:?}");

        let mut files = HashMap::new();
        files.insert(format!("/{}.gz", MNIST_FILES[0]), {
            let mut g = gzip(b"\0\0\x08\x03 whatever");
            let n = g.len();
            g[n - 5] ^= 0xff; // break the trailer's CRC-32
            g
        });
        let (url_gz, _) = start_server(files);
        let err = fetch_mnist(&root, Some(&url_gz), false).unwrap_err();
        assert!(matches!(err, FetchError::BadGzip { .. }), "{err:?}");

        let err = fetch_mnist(&root, Some("ftp://example.org/"), false).unwrap_err();
        assert!(matches!(err, FetchError::BadMirror { .. }));
        assert!(std::fs::read_dir(&root).unwrap().next().is_none(), "nothing written");
        std::fs::remove_dir_all(root).unwrap();
    }
}

//! Datasets: the in-memory [`Dataset`] type and the MNIST / Fashion-MNIST IDX loader.
//!
//! Input: a directory holding the four standard IDX files (`train-images-idx3-ubyte`,
//! `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), each either
//! gzipped (`.gz`) or raw. Compression is detected from the gzip magic bytes, never the name.
//! Output: a [`Dataset`] with pixels scaled to `[0, 1]` (`byte / 255`) and one-hot targets.
//!
//! Invariants:
//! - Every file is fully validated before it is used: IDX magic (2051 images, 2049 labels),
//!   non-zero image dimensions, header size against the real payload length (truncated files
//!   and trailing bytes are both errors), image/label count agreement, labels in `0..=9`,
//!   matching image shapes between train and test, and gzip integrity (the gzip CRC is checked
//!   because every stream is read to its end).
//! - Bad input never panics: each failure is a distinct [`DataError`] variant that names the
//!   file and says what is wrong.
//! - A garbage header cannot trigger a huge allocation: buffers grow only as real bytes arrive.
//! - `Split::x` is `n × input_dim` and `Split::y` is `n × target_dim`, both row-major.

use std::fs::File;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

/// What a dataset asks the circuit to learn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Targets are one-hot class vectors; `Split::labels` holds the class indices.
    Classification,
    /// Targets are real vectors; `Split::labels` is empty.
    Regression,
}

/// One part (train or test) of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    /// Number of samples.
    pub n: usize,
    /// Inputs, `n × input_dim`, row-major.
    pub x: Vec<f32>,
    /// Targets, `n × target_dim`, row-major; one-hot for classification.
    pub y: Vec<f32>,
    /// Class index per sample for classification; empty for regression.
    pub labels: Vec<u32>,
}

/// A dataset: a train split and a held-out test split with the same dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Short name, e.g. `mnist`, `fashion-mnist`, `xor`.
    pub name: String,
    /// Classification or regression.
    pub kind: TaskKind,
    /// Length of one input row.
    pub input_dim: usize,
    /// Length of one target row (the number of classes for classification).
    pub target_dim: usize,
    /// Training samples.
    pub train: Split,
    /// Held-out samples.
    pub test: Split,
}

impl Split {
    /// Input row `i` (`input_dim` values). Returns `None` when `i` is out of range.
    pub fn x_row(&self, i: usize, input_dim: usize) -> Option<&[f32]> {
        self.x.get(i.checked_mul(input_dim)?..(i + 1).checked_mul(input_dim)?)
    }

    /// Target row `i` (`target_dim` values). Returns `None` when `i` is out of range.
    pub fn y_row(&self, i: usize, target_dim: usize) -> Option<&[f32]> {
        self.y.get(i.checked_mul(target_dim)?..(i + 1).checked_mul(target_dim)?)
    }
}

/// Number of classes in MNIST and Fashion-MNIST.
pub const MNIST_CLASSES: usize = 10;
/// IDX magic of an unsigned-byte, 3-dimensional file (images).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of an unsigned-byte, 1-dimensional file (labels).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
/// Environment variable naming the MNIST directory when `--data-dir` is not given.
pub const MNIST_DIR_ENV: &str = "CIRC_MNIST_DIR";

/// The four IDX base names (without `.gz`), in the order train images, train labels, test
/// images, test labels. MNIST and Fashion-MNIST use the same names.
pub const MNIST_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

/// Why a dataset could not be loaded. Every variant names the file (or directory) involved.
#[derive(Debug, Error, Diagnostic)]
pub enum DataError {
    /// The data directory does not exist or is not a directory.
    #[error("data directory {} does not exist or is not a directory", dir.display())]
    #[diagnostic(
        code(circ::data::no_dir),
        help("pass an existing directory with `--data-dir DIR` or `CIRC_MNIST_DIR`, or download the data with `circ data fetch mnist --to DIR`")
    )]
    NotADirectory {
        /// The directory that was given.
        dir: PathBuf,
    },

    /// None of the accepted names for one IDX file exists in the directory.
    #[error("{} has no `{name}` (looked for {})", dir.display(), tried.join(", "))]
    #[diagnostic(
        code(circ::data::missing_file),
        help("the directory must hold the four IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each raw or `.gz`); `circ data fetch mnist --to DIR` downloads them")
    )]
    MissingFile {
        /// The data directory.
        dir: PathBuf,
        /// The IDX base name that is missing.
        name: String,
        /// Every file name that was tried.
        tried: Vec<String>,
    },

    /// The operating system refused to read the file.
    #[error("cannot read {}: {source}", path.display())]
    #[diagnostic(code(circ::data::io), help("check that the file exists and is readable"))]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The file (or its decompressed content, or its sample count) is empty.
    #[error("{} is empty: {detail}", path.display())]
    #[diagnostic(
        code(circ::data::empty),
        help("the file was probably cut off during download or copy; fetch it again with `circ data fetch mnist --to DIR`")
    )]
    Empty {
        /// The file.
        path: PathBuf,
        /// What exactly is empty.
        detail: String,
    },

    /// The file starts with the gzip magic but is not a valid gzip stream (bad header, corrupt
    /// deflate data, CRC mismatch, or cut off).
    #[error("{} is a corrupt gzip file: {detail}", path.display())]
    #[diagnostic(
        code(circ::data::gzip_corrupt),
        help("the download is damaged; delete the file and fetch it again with `circ data fetch mnist --to DIR` (or check it with `gzip -t`)")
    )]
    GzipCorrupt {
        /// The file.
        path: PathBuf,
        /// The decoder's complaint.
        detail: String,
    },

    /// The IDX magic number is not the one this file must have.
    #[error("{} has IDX magic {found:#010x} ({found}), expected {expected:#010x} ({expected}): {hint}", path.display())]
    #[diagnostic(
        code(circ::data::bad_magic),
        help("image files start with 0x00000803 (2051) and label files with 0x00000801 (2049); make sure the file is an MNIST-format IDX file and that images and labels are not swapped")
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The magic number read from the file.
        found: u32,
        /// The magic number required.
        expected: u32,
        /// A guess at what the file is instead.
        hint: String,
    },

    /// The header declares impossible dimensions (a zero image side).
    #[error("{} declares bad dimensions: {detail}", path.display())]
    #[diagnostic(
        code(circ::data::bad_dims),
        help("an IDX image file header holds the image count, rows and columns, all non-zero; the file is not a valid MNIST-format file")
    )]
    BadDims {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// The file is shorter than its header says.
    #[error("{} is truncated: {what} needs {expected} bytes but the file holds {actual}", path.display())]
    #[diagnostic(
        code(circ::data::truncated),
        help("the file was cut off; delete it and fetch it again with `circ data fetch mnist --to DIR`")
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Which part needs the bytes (header or header plus data).
        what: String,
        /// Bytes required (decompressed).
        expected: u64,
        /// Bytes present (decompressed).
        actual: u64,
    },

    /// The file is longer than its header says.
    #[error("{} has {extra} unexpected bytes after the {expected} bytes its header describes", path.display())]
    #[diagnostic(
        code(circ::data::trailing_bytes),
        help("the header does not match the payload; the file is damaged or not an MNIST-format IDX file")
    )]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header describes (decompressed).
        expected: u64,
        /// Bytes beyond that (at least this many).
        extra: u64,
    },

    /// The image file and the label file of one split disagree on the number of samples.
    #[error("{} holds {images} images but {} holds {labels} labels", images_path.display(), labels_path.display())]
    #[diagnostic(
        code(circ::data::count_mismatch),
        help("the image and label files of a split must come from the same set (e.g. `train-images` with `train-labels`)")
    )]
    CountMismatch {
        /// The image file.
        images_path: PathBuf,
        /// The label file.
        labels_path: PathBuf,
        /// Number of images.
        images: usize,
        /// Number of labels.
        labels: usize,
    },

    /// A label is outside `0..=9`.
    #[error("{} has label {label} at index {index}; labels must be in 0..=9", path.display())]
    #[diagnostic(
        code(circ::data::label_out_of_range),
        help("MNIST and Fashion-MNIST have ten classes; the label file is damaged or belongs to another dataset")
    )]
    LabelOutOfRange {
        /// The label file.
        path: PathBuf,
        /// Sample index of the first bad label.
        index: usize,
        /// The bad label.
        label: u8,
    },

    /// Train and test images have different sizes.
    #[error("{} has {train_rows}×{train_cols} images but {} has {test_rows}×{test_cols}", train_path.display(), test_path.display())]
    #[diagnostic(code(circ::data::shape_mismatch), help("the train and test files must come from the same dataset"))]
    ShapeMismatch {
        /// The training image file.
        train_path: PathBuf,
        /// The test image file.
        test_path: PathBuf,
        /// Training image rows.
        train_rows: usize,
        /// Training image columns.
        train_cols: usize,
        /// Test image rows.
        test_rows: usize,
        /// Test image columns.
        test_cols: usize,
    },
}

/// No MNIST directory was given on the command line or in the environment.
#[derive(Debug, Error, Diagnostic)]
#[error("this run needs MNIST but no data directory was given")]
#[diagnostic(
    code(circ::data::no_mnist),
    help("pass `--data-dir DIR`, or set `CIRC_MNIST_DIR=DIR`, or download it with `circ data fetch mnist --to DIR`")
)]
pub struct NoMnist;

/// The MNIST directory to use: the CLI path if given, else `$CIRC_MNIST_DIR` if set and
/// non-empty, else `None`.
pub fn mnist_dir(cli: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = cli {
        return Some(p.to_path_buf());
    }
    match std::env::var_os(MNIST_DIR_ENV) {
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => None,
    }
}

/// Like [`mnist_dir`] but turns "nothing given" into the [`NoMnist`] diagnostic.
pub fn require_mnist_dir(cli: Option<&Path>) -> Result<PathBuf, NoMnist> {
    mnist_dir(cli).ok_or(NoMnist)
}

/// Loads MNIST (or Fashion-MNIST when `fashion`) from `dir`.
///
/// Each of the four files may be gzipped or raw; when both `NAME.gz` and `NAME` exist the
/// gzipped one is used, because it is what `circ data fetch` writes and its CRC catches
/// corruption that a raw file cannot reveal.
pub fn load_mnist(dir: &Path, fashion: bool) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::NotADirectory { dir: dir.to_path_buf() });
    }
    let paths: Vec<PathBuf> = MNIST_FILES.iter().map(|name| find_idx_file(dir, name)).collect::<Result<_, _>>()?;

    // The training set is six times the test set; decoding both at once uses a second core
    // and cuts wall time, which matters because every MNIST run starts here.
    let (train, test) = std::thread::scope(|s| {
        let train = s.spawn(|| load_split(&paths[0], &paths[1]));
        let test = load_split(&paths[2], &paths[3]);
        let train = train
            .join()
            .unwrap_or_else(|_| Err(DataError::Io { path: paths[0].clone(), source: io::Error::other("loader thread panicked") }));
        (train, test)
    });
    let (train, train_rows, train_cols) = train?;
    let (test, test_rows, test_cols) = test?;
    if (train_rows, train_cols) != (test_rows, test_cols) {
        return Err(DataError::ShapeMismatch {
            train_path: paths[0].clone(),
            test_path: paths[2].clone(),
            train_rows,
            train_cols,
            test_rows,
            test_cols,
        });
    }
    Ok(Dataset {
        name: if fashion { "fashion-mnist" } else { "mnist" }.to_string(),
        kind: TaskKind::Classification,
        input_dim: train_rows * train_cols,
        target_dim: MNIST_CLASSES,
        train,
        test,
    })
}

/// The path of IDX file `name` in `dir`: `NAME.gz`, then `NAME`, then the Kaggle spelling
/// `train-images.idx3-ubyte` (a dot before `idx`), which some mirrors use.
fn find_idx_file(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let kaggle = name.replacen("-idx", ".idx", 1);
    let tried = vec![format!("{name}.gz"), name.to_string(), format!("{kaggle}.gz"), kaggle];
    for t in &tried {
        let p = dir.join(t);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(DataError::MissingFile { dir: dir.to_path_buf(), name: name.to_string(), tried })
}

/// Loads one split from its image and label files; also returns (rows, cols).
fn load_split(images: &Path, labels: &Path) -> Result<(Split, usize, usize), DataError> {
    let img = read_idx_file(images, IdxKind::Images)?;
    let lab = read_idx_file(labels, IdxKind::Labels)?;
    if img.n != lab.n {
        return Err(DataError::CountMismatch {
            images_path: images.to_path_buf(),
            labels_path: labels.to_path_buf(),
            images: img.n,
            labels: lab.n,
        });
    }
    check_labels(labels, &lab.data)?;
    let n = img.n;
    // A lookup table keeps the conversion a plain gather, which the compiler vectorises.
    let lut: [f32; 256] = std::array::from_fn(|b| b as f32 / 255.0);
    let x: Vec<f32> = img.data.iter().map(|&b| lut[b as usize]).collect();
    let mut y = vec![0.0f32; n * MNIST_CLASSES];
    let labels_u32: Vec<u32> = lab.data.iter().map(|&l| u32::from(l)).collect();
    for (row, &l) in y.chunks_exact_mut(MNIST_CLASSES).zip(&lab.data) {
        row[l as usize] = 1.0;
    }
    Ok((Split { n, x, y, labels: labels_u32 }, img.rows, img.cols))
}

fn check_labels(path: &Path, labels: &[u8]) -> Result<(), DataError> {
    match labels.iter().position(|&l| usize::from(l) >= MNIST_CLASSES) {
        Some(index) => Err(DataError::LabelOutOfRange { path: path.to_path_buf(), index, label: labels[index] }),
        None => Ok(()),
    }
}

/// Which kind of IDX file is expected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdxKind {
    Images,
    Labels,
}

impl IdxKind {
    fn magic(self) -> u32 {
        match self {
            IdxKind::Images => IDX_IMAGES_MAGIC,
            IdxKind::Labels => IDX_LABELS_MAGIC,
        }
    }
    fn header_len(self) -> usize {
        match self {
            IdxKind::Images => 16,
            IdxKind::Labels => 8,
        }
    }
}

/// A validated IDX file: `n` items of `rows × cols` bytes (1 × 1 for labels).
#[derive(Debug)]
pub(crate) struct Idx {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

/// Reads and validates one IDX file (gzipped or raw, detected by content).
pub(crate) fn read_idx_file(path: &Path, kind: IdxKind) -> Result<Idx, DataError> {
    let io_err = |source: io::Error| DataError::Io { path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(io_err)?;
    let len = file.metadata().map_err(io_err)?.len();
    if len == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), detail: "the file has 0 bytes".into() });
    }
    let mut head = [0u8; 2];
    let got = read_full(&mut file, &mut head).map_err(io_err)?;
    let head = Cursor::new(head[..got].to_vec());
    if got == 2 && head.get_ref()[..] == [0x1f, 0x8b] {
        let dec = flate2::read::MultiGzDecoder::new(head.chain(file));
        read_idx(path, dec, kind, true)
    } else {
        read_idx(path, io::BufReader::new(head.chain(file)), kind, false)
    }
}

/// Validates IDX content already in memory (already decompressed). Used by `fetch` to check a
/// download before it is written to disk; `path` is only used in error messages.
pub(crate) fn parse_idx_bytes(path: &Path, bytes: &[u8], kind: IdxKind) -> Result<Idx, DataError> {
    if bytes.is_empty() {
        return Err(DataError::Empty { path: path.to_path_buf(), detail: "the content has 0 bytes".into() });
    }
    read_idx(path, bytes, kind, false)
}

/// Parses an IDX stream. `gz` says whether `r` is a gzip decoder, so that read errors are
/// reported as gzip corruption rather than as I/O failures.
fn read_idx<R: Read>(path: &Path, mut r: R, kind: IdxKind, gz: bool) -> Result<Idx, DataError> {
    let read_err = |e: io::Error| {
        if gz {
            let detail = if e.kind() == io::ErrorKind::UnexpectedEof {
                "the gzip stream ends early (the file is cut off)".to_string()
            } else {
                e.to_string()
            };
            DataError::GzipCorrupt { path: path.to_path_buf(), detail }
        } else {
            DataError::Io { path: path.to_path_buf(), source: e }
        }
    };

    let header_len = kind.header_len();
    let mut header = [0u8; 16];
    let got = read_full(&mut r, &mut header[..header_len]).map_err(read_err)?;
    if got == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), detail: "it decompresses to 0 bytes".into() });
    }
    if got >= 4 {
        let magic = be_u32(&header[0..4]);
        if magic != kind.magic() {
            return Err(bad_magic(path, magic, kind));
        }
    }
    if got < header_len {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what: "the IDX header".into(),
            expected: header_len as u64,
            actual: got as u64,
        });
    }
    let n = be_u32(&header[4..8]) as usize;
    let (rows, cols) = match kind {
        IdxKind::Images => (be_u32(&header[8..12]) as usize, be_u32(&header[12..16]) as usize),
        IdxKind::Labels => (1, 1),
    };
    if rows == 0 || cols == 0 {
        return Err(DataError::BadDims { path: path.to_path_buf(), detail: format!("images of {rows}×{cols} pixels") });
    }
    if n == 0 {
        return Err(DataError::Empty { path: path.to_path_buf(), detail: "its header declares 0 samples".into() });
    }
    // u32 × u32 × u32 fits in u128 always; anything above u64 is certainly truncated.
    let payload = (n as u128) * (rows as u128) * (cols as u128);
    let expected_total = u64::try_from(payload + header_len as u128).unwrap_or(u64::MAX);
    let what = match kind {
        IdxKind::Images => format!("the header plus {n} images of {rows}×{cols}"),
        IdxKind::Labels => format!("the header plus {n} labels"),
    };
    let payload = u64::try_from(payload).unwrap_or(u64::MAX);

    // `take` + `read_to_end` only grows the buffer as bytes really arrive, so a lying header
    // costs nothing; the capacity hint is capped for the same reason.
    let mut data = Vec::with_capacity(payload.min(64 << 20) as usize);
    (&mut r).take(payload).read_to_end(&mut data).map_err(read_err)?;
    if (data.len() as u64) < payload {
        return Err(DataError::Truncated {
            path: path.to_path_buf(),
            what,
            expected: expected_total,
            actual: header_len as u64 + data.len() as u64,
        });
    }
    // Read on to the end: this both detects trailing bytes and makes the gzip decoder verify
    // the stream's CRC and length, which it only does at end of stream.
    let mut extra = 0u64;
    let mut buf = [0u8; 4096];
    loop {
        let k = match r.read(&mut buf) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(read_err(e)),
        };
        if k == 0 {
            break;
        }
        extra += k as u64;
        if extra > (1 << 20) {
            // Enough evidence; no need to read an arbitrarily long tail.
            break;
        }
    }
    if extra > 0 {
        return Err(DataError::TrailingBytes { path: path.to_path_buf(), expected: expected_total, extra });
    }
    Ok(Idx { n, rows, cols, data })
}

fn bad_magic(path: &Path, found: u32, kind: IdxKind) -> DataError {
    let other = match kind {
        IdxKind::Images => IDX_LABELS_MAGIC,
        IdxKind::Labels => IDX_IMAGES_MAGIC,
    };
    let hint = if found == other {
        match kind {
            IdxKind::Images => "this is an IDX label file; are the image and label files swapped?",
            IdxKind::Labels => "this is an IDX image file; are the image and label files swapped?",
        }
        .to_string()
    } else if found >> 16 != 0 {
        // IDX magics start with two zero bytes; anything else is a different format (an HTML
        // error page saved by a failed download, a zip, ...).
        "this is not an IDX file".to_string()
    } else if (found >> 8) & 0xff != 0x08 {
        format!("element type code {:#04x} is not unsigned byte (0x08)", (found >> 8) & 0xff)
    } else {
        format!("an IDX file of {} dimensions, expected {}", found & 0xff, kind.magic() & 0xff)
    };
    DataError::BadMagic { path: path.to_path_buf(), found, expected: kind.magic(), hint }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::atomic::tests::scratch_dir;
    use std::io::Write;

    pub(crate) fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IDX_IMAGES_MAGIC, n, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(pixels);
        v
    }

    pub(crate) fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&IDX_LABELS_MAGIC.to_be_bytes());
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A small valid dataset: 6 train and 4 test images of 3×2 pixels.
    fn valid_files() -> [(String, Vec<u8>); 4] {
        let train_px: Vec<u8> = (0..36u32).map(|i| (i * 7 % 256) as u8).collect();
        let test_px: Vec<u8> = (0..24u32).map(|i| (255 - i) as u8).collect();
        [
            (MNIST_FILES[0].into(), idx_images(6, 3, 2, &train_px)),
            (MNIST_FILES[1].into(), idx_labels(&[0, 1, 2, 9, 5, 0])),
            (MNIST_FILES[2].into(), idx_images(4, 3, 2, &test_px)),
            (MNIST_FILES[3].into(), idx_labels(&[3, 3, 7, 1])),
        ]
    }

    /// Writes the valid dataset (gzipped if `gz`), letting `tweak` replace one file's bytes.
    fn write_set(tag: &str, gz: bool, tweak: impl Fn(&str, Vec<u8>) -> Vec<u8>) -> PathBuf {
        let dir = scratch_dir(tag);
        for (name, bytes) in valid_files() {
            let bytes = tweak(&name, bytes);
            if gz {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
            } else {
                std::fs::write(dir.join(&name), bytes).unwrap();
            }
        }
        dir
    }

    fn code(e: &DataError) -> String {
        e.code().map(|c| c.to_string()).unwrap_or_default()
    }

    #[test]
    fn loads_raw_and_gz_identically() {
        let raw_dir = write_set("data-raw", false, |_, b| b);
        let gz_dir = write_set("data-gz", true, |_, b| b);
        let a = load_mnist(&raw_dir, false).unwrap();
        let b = load_mnist(&gz_dir, true).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.test, b.test);
        assert_eq!(a.name, "mnist");
        assert_eq!(b.name, "fashion-mnist");
        assert_eq!(a.kind, TaskKind::Classification);
        assert_eq!((a.input_dim, a.target_dim), (6, 10));
        assert_eq!((a.train.n, a.test.n), (6, 4));
        assert_eq!(a.train.x.len(), 36);
        assert_eq!(a.train.y.len(), 60);
        assert_eq!(a.train.labels, vec![0, 1, 2, 9, 5, 0]);
        // Pixel i of train is (7 i mod 256) / 255.
        assert_eq!(a.train.x[1], 7.0 / 255.0);
        assert_eq!(a.test.x[0], 1.0);
        assert!(a.train.x.iter().all(|&v| (0.0..=1.0).contains(&v)));
        // One-hot rows.
        assert_eq!(a.train.y_row(3, 10).unwrap(), &[0., 0., 0., 0., 0., 0., 0., 0., 0., 1.]);
        assert_eq!(a.test.y_row(2, 10).unwrap()[7], 1.0);
        assert!(a.test.y_row(4, 10).is_none());
        for d in [raw_dir, gz_dir] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn gzip_detected_by_content_not_name() {
        // A raw file named `.gz` and a gzipped file without `.gz` both load.
        let dir = scratch_dir("data-names");
        for (i, (name, bytes)) in valid_files().into_iter().enumerate() {
            if i % 2 == 0 {
                std::fs::write(dir.join(format!("{name}.gz")), bytes).unwrap();
            } else {
                std::fs::write(dir.join(name), gzip(&bytes)).unwrap();
            }
        }
        let d = load_mnist(&dir, false).unwrap();
        assert_eq!(d.train.n, 6);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Runs the loader on a dataset with one file altered and returns the error.
    fn broken(tag: &str, gz: bool, target: usize, f: impl Fn(Vec<u8>) -> Vec<u8>) -> (DataError, PathBuf) {
        let name = MNIST_FILES[target];
        let dir = write_set(tag, gz, |n, b| if n == name { f(b) } else { b });
        let err = load_mnist(&dir, false).unwrap_err();
        let file = dir.join(if gz { format!("{name}.gz") } else { name.to_string() });
        let msg = err.to_string();
        assert!(msg.contains(&file.display().to_string()), "message must name {}: {msg}", file.display());
        assert!(err.help().is_some(), "every error has help");
        std::fs::remove_dir_all(&dir).unwrap();
        (err, file)
    }

    #[test]
    fn truncated_images() {
        let (e, _) = broken("trunc", false, 0, |mut b| {
            b.truncate(b.len() - 5);
            b
        });
        assert!(matches!(e, DataError::Truncated { expected: 52, actual: 47, .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::truncated");
    }

    #[test]
    fn truncated_header() {
        let (e, _) = broken("trunc-h", true, 1, |mut b| {
            b.truncate(6);
            b
        });
        assert!(matches!(e, DataError::Truncated { expected: 8, actual: 6, .. }), "{e:?}");
    }

    #[test]
    fn trailing_bytes() {
        let (e, _) = broken("trailing", true, 2, |mut b| {
            b.extend_from_slice(&[1, 2, 3]);
            b
        });
        assert!(matches!(e, DataError::TrailingBytes { extra: 3, .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::trailing_bytes");
    }

    #[test]
    fn wrong_magic() {
        let (e, _) = broken("magic", false, 0, |mut b| {
            b[3] = 0x02;
            b
        });
        match &e {
            DataError::BadMagic { found, expected, hint, .. } => {
                assert_eq!((*found, *expected), (0x802, 2051));
                assert!(hint.contains("2 dimensions"), "{hint}");
            }
            _ => panic!("{e:?}"),
        }
        assert_eq!(code(&e), "circ::data::bad_magic");
    }

    #[test]
    fn swapped_files_are_recognised() {
        let (e, _) = broken("swap", false, 3, |_| idx_images(4, 3, 2, &[0; 24]));
        match &e {
            DataError::BadMagic { found, hint, .. } => {
                assert_eq!(*found, IDX_IMAGES_MAGIC);
                assert!(hint.contains("swapped"), "{hint}");
            }
            _ => panic!("{e:?}"),
        }
    }

    #[test]
    fn html_instead_of_idx() {
        let (e, _) = broken("html", false, 2, |_| b"<html>404 not found</html>".to_vec());
        match &e {
            DataError::BadMagic { hint, .. } => assert!(hint.contains("not an IDX"), "{hint}"),
            _ => panic!("{e:?}"),
        }
    }

    #[test]
    fn zero_dimension() {
        let (e, _) = broken("dims", false, 0, |_| idx_images(6, 0, 2, &[]));
        assert!(matches!(e, DataError::BadDims { .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::bad_dims");
    }

    #[test]
    fn huge_header_does_not_allocate() {
        // 4e9 images of 65536² pixels: must be reported as truncated, instantly.
        let (e, _) = broken("huge", true, 0, |_| idx_images(u32::MAX, 65536, 65536, &[1, 2, 3]));
        assert!(matches!(e, DataError::Truncated { .. }), "{e:?}");
    }

    #[test]
    fn count_mismatch() {
        let (e, _) = broken("count", false, 1, |_| idx_labels(&[0, 1, 2, 3, 4]));
        match &e {
            DataError::CountMismatch { images, labels, images_path, .. } => {
                assert_eq!((*images, *labels), (6, 5));
                assert!(e.to_string().contains(&images_path.display().to_string()));
            }
            _ => panic!("{e:?}"),
        }
        assert_eq!(code(&e), "circ::data::count_mismatch");
    }

    #[test]
    fn label_out_of_range() {
        let (e, _) = broken("label", true, 3, |_| idx_labels(&[3, 3, 10, 1]));
        assert!(matches!(e, DataError::LabelOutOfRange { index: 2, label: 10, .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::label_out_of_range");
    }

    #[test]
    fn empty_file() {
        let dir = write_set("empty", false, |_, b| b);
        let p = dir.join(MNIST_FILES[2]);
        std::fs::write(&p, b"").unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::empty");
        assert!(e.to_string().contains(&p.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_after_decompression_and_zero_samples() {
        let dir = write_set("empty-gz", true, |_, b| b);
        let p = dir.join(format!("{}.gz", MNIST_FILES[0]));
        std::fs::write(&p, gzip(b"")).unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
        std::fs::remove_dir_all(dir).unwrap();

        let (e, _) = broken("zero-n", false, 1, |_| idx_labels(&[]));
        assert!(matches!(e, DataError::Empty { .. }), "{e:?}");
    }

    #[test]
    fn gzip_corruption() {
        // Flip a byte inside the deflate stream: either the inflater or the CRC rejects it.
        let dir = write_set("gzbad", true, |_, b| b);
        let p = dir.join(format!("{}.gz", MNIST_FILES[0]));
        let mut gz = std::fs::read(&p).unwrap();
        let mid = gz.len() / 2;
        gz[mid] ^= 0x55;
        std::fs::write(&p, &gz).unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::GzipCorrupt { .. }), "{e:?}");
        assert_eq!(code(&e), "circ::data::gzip_corrupt");
        assert!(e.to_string().contains(&p.display().to_string()));

        // A cut-off gzip stream.
        let good = gzip(&valid_files()[0].1);
        std::fs::write(&p, &good[..good.len() - 6]).unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::GzipCorrupt { .. }), "{e:?}");

        // A CRC mismatch alone (payload intact) is caught because the stream is read to EOF.
        let mut crc_bad = good.clone();
        let n = crc_bad.len();
        crc_bad[n - 8] ^= 0xff;
        std::fs::write(&p, &crc_bad).unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::GzipCorrupt { .. }), "{e:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shape_mismatch_between_train_and_test() {
        let (e, _) = broken("shape", false, 2, |_| idx_images(4, 2, 3, &[0; 24]));
        assert!(matches!(e, DataError::ShapeMismatch { .. }), "{e:?}");
    }

    #[test]
    fn missing_file_and_dir() {
        let dir = write_set("missing", false, |_, b| b);
        std::fs::remove_file(dir.join(MNIST_FILES[3])).unwrap();
        let e = load_mnist(&dir, false).unwrap_err();
        assert!(matches!(e, DataError::MissingFile { .. }), "{e:?}");
        assert!(e.to_string().contains("t10k-labels-idx1-ubyte.gz"));
        let nodir = dir.join("nope");
        let e = load_mnist(&nodir, false).unwrap_err();
        assert!(matches!(e, DataError::NotADirectory { .. }), "{e:?}");
        assert!(e.to_string().contains(&nodir.display().to_string()));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mnist_dir_prefers_cli_and_no_mnist_help() {
        let p = Path::new("/some/where");
        assert_eq!(mnist_dir(Some(p)), Some(p.to_path_buf()));
        let help = NoMnist.help().unwrap().to_string();
        for needle in ["--data-dir DIR", "CIRC_MNIST_DIR", "circ data fetch mnist --to DIR"] {
            assert!(help.contains(needle), "{help}");
        }
        assert_eq!(NoMnist.code().unwrap().to_string(), "circ::data::no_mnist");
    }

    /// Loads the real MNIST when `CIRC_MNIST_DIR` is set.
    #[test]
    fn real_mnist() {
        let Some(dir) = mnist_dir(None) else {
            crate::atomic::tests::skip_loudly("no MNIST (set CIRC_MNIST_DIR to run data::tests::real_mnist)");
            return;
        };
        let t = std::time::Instant::now();
        let d = load_mnist(&dir, false).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("loaded MNIST from {} in {:?}", dir.display(), t.elapsed());
        assert_eq!((d.train.n, d.test.n), (60000, 10000));
        assert_eq!((d.input_dim, d.target_dim), (784, 10));
        assert_eq!(d.train.x.len(), 60000 * 784);
        let count = |s: &Split, c: u32| s.labels.iter().filter(|&&l| l == c).count();
        assert_eq!(count(&d.train, 0), 5923);
        assert_eq!(count(&d.train, 1), 6742);
        assert_eq!(count(&d.test, 0), 980);
        assert_eq!(count(&d.test, 1), 1135);
        let sum: f32 = d.train.y.iter().sum();
        assert_eq!(sum, 60000.0);
        assert!(d.train.x.contains(&1.0));
    }
}

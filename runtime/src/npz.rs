//! NumPy `.npz` checkpoints: writer and reader.
//!
//! Input (write): named arrays with shapes and `f32`/`f64`/`i64`/`u8` data.
//! Output: a zip archive of `.npy` (format 1.0, little-endian, C order) members, stored without
//! compression, which `numpy.load` opens directly (`np.load(path)["name"]`).
//!
//! Invariants:
//! - The file is written atomically, and byte-for-byte deterministically (fixed 1980-01-01
//!   timestamps, input order), so equal checkpoints are equal files.
//! - The reader accepts everything the writer writes, plus what NumPy's `savez` /
//!   `savez_compressed` produce for these dtypes (zip64 extras, deflate, `.npy` versions 1–3,
//!   Fortran order, which is converted to C order).
//! - Bad input is an [`NpzError`] naming the file and, where known, the member; never a panic.
//!   Every length read from the file is checked against the real file size before use, so a
//!   corrupt header cannot cause a huge allocation or an out-of-bounds slice.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use thiserror::Error;

use crate::atomic::write_atomic;

/// The elements of an array.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4`
    F32(Vec<f32>),
    /// `<f8`
    F64(Vec<f64>),
    /// `<i8`
    I64(Vec<i64>),
    /// `|u1`
    U8(Vec<u8>),
}

impl NpyData {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::U8(v) => v.len(),
        }
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The NumPy type string.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I64(_) => "<i8",
            NpyData::U8(_) => "|u1",
        }
    }

    fn elem_size(&self) -> usize {
        match self {
            NpyData::F32(_) => 4,
            NpyData::F64(_) | NpyData::I64(_) => 8,
            NpyData::U8(_) => 1,
        }
    }

    fn append_le_bytes(&self, out: &mut Vec<u8>) {
        match self {
            NpyData::F32(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::F64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::I64(v) => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            NpyData::U8(v) => out.extend_from_slice(v),
        }
    }
}

/// One named array of an `.npz` file. `data.len()` equals the product of `shape` (1 for `[]`).
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Key in the archive (without the `.npy` suffix).
    pub name: String,
    /// Dimensions, C order (last index fastest).
    pub shape: Vec<usize>,
    /// Elements in C order.
    pub data: NpyData,
}

impl NpyArray {
    /// An `f32` array; see [`NpyArray`] for the shape invariant (checked when writing).
    pub fn f32(name: impl Into<String>, shape: &[usize], data: Vec<f32>) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), data: NpyData::F32(data) }
    }

    /// An `f64` array.
    pub fn f64(name: impl Into<String>, shape: &[usize], data: Vec<f64>) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), data: NpyData::F64(data) }
    }

    /// An `i64` array.
    pub fn i64(name: impl Into<String>, shape: &[usize], data: Vec<i64>) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), data: NpyData::I64(data) }
    }

    /// A `u8` array.
    pub fn u8(name: impl Into<String>, shape: &[usize], data: Vec<u8>) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), data: NpyData::U8(data) }
    }
}

/// Why an `.npz` file could not be written or read.
#[derive(Debug, Error, Diagnostic)]
pub enum NpzError {
    /// Reading or writing the file failed.
    #[error("cannot access {}: {source}", path.display())]
    #[diagnostic(code(circ::npz::io), help("check that the path exists and is readable (or its directory writable)"))]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The arrays handed to the writer are inconsistent (shape vs data length, duplicate or
    /// empty names, or too large for a non-zip64 archive).
    #[error("cannot write {}: array `{name}`: {detail}", path.display())]
    #[diagnostic(
        code(circ::npz::invalid_array),
        help("this is a bug in the caller: every array needs a unique non-empty name and data matching its shape")
    )]
    InvalidArray {
        /// The file.
        path: PathBuf,
        /// The array.
        name: String,
        /// What is wrong.
        detail: String,
    },

    /// The file is not a zip archive (no end-of-central-directory record), or its directory
    /// is damaged.
    #[error("{} is not a valid .npz (zip) file: {detail}", path.display())]
    #[diagnostic(code(circ::npz::bad_zip), help("the file is damaged or not an .npz checkpoint; write it again or pick another file"))]
    BadZip {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },

    /// A member uses a zip or NumPy feature this reader does not support.
    #[error("{} member `{member}` uses an unsupported feature: {detail}", path.display())]
    #[diagnostic(
        code(circ::npz::unsupported),
        help("circ reads stored or deflated members holding little-endian f4/f8/i8/u1 arrays; re-save with `np.savez(path, **{{k: v.astype('<f4')}})`")
    )]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The member name.
        member: String,
        /// What is unsupported.
        detail: String,
    },

    /// A member's data does not match its CRC-32.
    #[error("{} member `{member}` is corrupt: CRC-32 {actual:#010x}, expected {expected:#010x}", path.display())]
    #[diagnostic(code(circ::npz::crc_mismatch), help("the checkpoint was damaged after it was written; use another copy"))]
    CrcMismatch {
        /// The file.
        path: PathBuf,
        /// The member name.
        member: String,
        /// CRC recorded in the archive.
        expected: u32,
        /// CRC of the data read.
        actual: u32,
    },

    /// A member is not a valid `.npy` array.
    #[error("{} member `{member}` is not a valid .npy array: {detail}", path.display())]
    #[diagnostic(code(circ::npz::bad_npy), help("the checkpoint is damaged or holds something other than plain numeric arrays"))]
    BadNpy {
        /// The file.
        path: PathBuf,
        /// The member name.
        member: String,
        /// What is wrong.
        detail: String,
    },
}

// Zip record signatures.
const LOCAL_SIG: u32 = 0x0403_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
/// MS-DOS date of 1980-01-01 (the earliest representable): a fixed timestamp keeps the output
/// byte-identical across runs.
const DOS_DATE_1980: u16 = (1 << 5) | 1;

/// Writes `arrays` to `path` as an uncompressed `.npz`, atomically.
///
/// Fails with [`NpzError::InvalidArray`] (before touching the file) if a shape does not match
/// its data, a name is empty or repeated, or the archive would need zip64 (≥ 4 GiB or ≥ 65535
/// members).
pub fn write_npz(path: &Path, arrays: &[NpyArray]) -> Result<(), NpzError> {
    let bytes = encode_npz(path, arrays)?;
    write_atomic(path, &bytes).map_err(|source| NpzError::Io { path: path.to_path_buf(), source })
}

/// Builds the `.npz` bytes in memory (checkpoints are small enough; this keeps the atomic write
/// a single call and the layout easy to verify).
fn encode_npz(path: &Path, arrays: &[NpyArray]) -> Result<Vec<u8>, NpzError> {
    let invalid = |name: &str, detail: String| NpzError::InvalidArray { path: path.to_path_buf(), name: name.to_string(), detail };
    if arrays.len() >= 0xffff {
        return Err(invalid("", format!("{} arrays; at most 65534 are supported", arrays.len())));
    }
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut central = Vec::new();
    for a in arrays {
        if a.name.is_empty() {
            return Err(invalid(&a.name, "empty name".into()));
        }
        if !seen.insert(a.name.as_str()) {
            return Err(invalid(&a.name, "name used twice".into()));
        }
        let count = a.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(a.data.len()) {
            return Err(invalid(
                &a.name,
                format!(
                    "shape {:?} holds {} elements but the data has {}",
                    a.shape,
                    count.map_or("too many".to_string(), |c| c.to_string()),
                    a.data.len()
                ),
            ));
        }
        let member = format!("{}.npy", a.name);
        let npy = encode_npy(a);
        let offset = out.len();
        if npy.len() > u32::MAX as usize - 1 || offset > u32::MAX as usize - 1 {
            return Err(invalid(&a.name, "the archive would exceed 4 GiB (zip64 is not written)".into()));
        }
        if member.len() > u16::MAX as usize {
            return Err(invalid(&a.name, "name too long".into()));
        }
        let crc = crc32fast::hash(&npy);
        let size = npy.len() as u32;
        // Local file header.
        put_u32(&mut out, LOCAL_SIG);
        put_u16(&mut out, 20); // version needed: 2.0
        put_u16(&mut out, 0); // flags
        put_u16(&mut out, 0); // method: stored
        put_u16(&mut out, 0); // time 00:00:00
        put_u16(&mut out, DOS_DATE_1980);
        put_u32(&mut out, crc);
        put_u32(&mut out, size);
        put_u32(&mut out, size);
        put_u16(&mut out, member.len() as u16);
        put_u16(&mut out, 0); // extra length
        out.extend_from_slice(member.as_bytes());
        out.extend_from_slice(&npy);
        // Central directory entry.
        put_u32(&mut central, CENTRAL_SIG);
        put_u16(&mut central, 20); // version made by
        put_u16(&mut central, 20); // version needed
        put_u16(&mut central, 0);
        put_u16(&mut central, 0);
        put_u16(&mut central, 0);
        put_u16(&mut central, DOS_DATE_1980);
        put_u32(&mut central, crc);
        put_u32(&mut central, size);
        put_u32(&mut central, size);
        put_u16(&mut central, member.len() as u16);
        put_u16(&mut central, 0); // extra
        put_u16(&mut central, 0); // comment
        put_u16(&mut central, 0); // disk
        put_u16(&mut central, 0); // internal attributes
        put_u32(&mut central, 0o100644 << 16); // external: regular file, rw-r--r--
        put_u32(&mut central, offset as u32);
        central.extend_from_slice(member.as_bytes());
    }
    let cd_offset = out.len();
    if cd_offset + central.len() > u32::MAX as usize - 1 {
        return Err(invalid("", "the archive would exceed 4 GiB (zip64 is not written)".into()));
    }
    out.extend_from_slice(&central);
    put_u32(&mut out, EOCD_SIG);
    put_u16(&mut out, 0);
    put_u16(&mut out, 0);
    put_u16(&mut out, arrays.len() as u16);
    put_u16(&mut out, arrays.len() as u16);
    put_u32(&mut out, central.len() as u32);
    put_u32(&mut out, cd_offset as u32);
    put_u16(&mut out, 0); // comment length
    Ok(out)
}

/// One `.npy` v1.0 file: magic, version, header (padded so data starts at a multiple of 64,
/// as NumPy does), data.
fn encode_npy(a: &NpyArray) -> Vec<u8> {
    let shape = match a.shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", a.shape[0]),
        _ => format!("({})", a.shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", a.data.descr(), shape);
    // 6 magic + 2 version + 2 length bytes precede the header, which ends in '\n'.
    let unpadded = 10 + header.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    header.extend(std::iter::repeat_n(' ', pad));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * a.data.elem_size());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    // Shapes are bounded by usize digits: the header is far below 64 KiB.
    put_u16(&mut out, header.len() as u16);
    out.extend_from_slice(header.as_bytes());
    a.data.append_le_bytes(&mut out);
    out
}

fn put_u16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_le_bytes());
}
fn put_u32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Little-endian field reader over a byte slice that never panics: out-of-range reads return
/// `None`.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u16(&self, at: usize) -> Option<u16> {
        let b = self.0.get(at..at.checked_add(2)?)?;
        Some(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        let b = self.0.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, at: usize) -> Option<u64> {
        let b = self.0.get(at..at.checked_add(8)?)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

/// One central-directory entry, with sizes resolved through zip64 extras.
struct Entry {
    name: String,
    method: u16,
    flags: u16,
    crc: u32,
    comp_size: u64,
    size: u64,
    local_offset: u64,
}

/// Reads every array of an `.npz` file, in archive order.
pub fn read_npz(path: &Path) -> Result<Vec<NpyArray>, NpzError> {
    let bytes = std::fs::read(path).map_err(|source| NpzError::Io { path: path.to_path_buf(), source })?;
    decode_npz(path, &bytes)
}

fn decode_npz(path: &Path, bytes: &[u8]) -> Result<Vec<NpyArray>, NpzError> {
    let bad = |detail: &str| NpzError::BadZip { path: path.to_path_buf(), detail: detail.to_string() };
    let le = Le(bytes);
    if bytes.is_empty() {
        return Err(bad("the file is empty"));
    }
    // The end-of-central-directory record is 22 bytes plus a comment of up to 65535 bytes;
    // search backwards for its signature.
    let min_start = bytes.len().saturating_sub(22 + 0xffff);
    let eocd = (min_start..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&i| le.u32(i) == Some(EOCD_SIG))
        .ok_or_else(|| bad("no end-of-central-directory record (not a zip file, or cut off)"))?;
    let mut count = u64::from(le.u16(eocd + 10).ok_or_else(|| bad("short EOCD"))?);
    let mut cd_size = u64::from(le.u32(eocd + 12).ok_or_else(|| bad("short EOCD"))?);
    let mut cd_offset = u64::from(le.u32(eocd + 16).ok_or_else(|| bad("short EOCD"))?);
    if count == 0xffff || cd_size == 0xffff_ffff || cd_offset == 0xffff_ffff {
        // Zip64: the locator sits just before the EOCD and points at the zip64 EOCD record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| le.u32(l) == Some(ZIP64_LOCATOR_SIG))
            .ok_or_else(|| bad("zip64 archive without a zip64 locator"))?;
        let rec = le
            .u64(loc + 8)
            .and_then(|r| usize::try_from(r).ok())
            .filter(|&r| le.u32(r) == Some(ZIP64_EOCD_SIG))
            .ok_or_else(|| bad("zip64 locator points outside the file"))?;
        count = le.u64(rec + 32).ok_or_else(|| bad("short zip64 EOCD"))?;
        cd_size = le.u64(rec + 40).ok_or_else(|| bad("short zip64 EOCD"))?;
        cd_offset = le.u64(rec + 48).ok_or_else(|| bad("short zip64 EOCD"))?;
    }
    let cd_end = cd_offset
        .checked_add(cd_size)
        .filter(|&e| e <= bytes.len() as u64)
        .ok_or_else(|| bad("central directory lies outside the file"))?;
    // Each entry takes at least 46 bytes, so the count is bounded by the directory size; this
    // keeps a corrupt count from driving a huge allocation.
    if count > cd_size / 46 {
        return Err(bad("entry count larger than the central directory can hold"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut at = cd_offset as usize;
    for _ in 0..count {
        if le.u32(at) != Some(CENTRAL_SIG) || at + 46 > cd_end as usize {
            return Err(bad("damaged central directory entry"));
        }
        let field16 = |o: usize| le.u16(at + o).map(u64::from).unwrap_or(0);
        let field32 = |o: usize| le.u32(at + o).map(u64::from).unwrap_or(0);
        let flags = field16(8) as u16;
        let method = field16(10) as u16;
        let crc = field32(16) as u32;
        let mut comp_size = field32(20);
        let mut size = field32(24);
        let name_len = field16(28) as usize;
        let extra_len = field16(30) as usize;
        let comment_len = field16(32) as usize;
        let mut local_offset = field32(42);
        let name_start = at + 46;
        let extra_start = name_start + name_len;
        let next = extra_start + extra_len + comment_len;
        if next > cd_end as usize {
            return Err(bad("central directory entry runs past the directory"));
        }
        let name = String::from_utf8_lossy(&bytes[name_start..extra_start]).into_owned();
        // Zip64 extended information (id 1): present fields replace the 0xffffffff ones, in
        // the fixed order size, compressed size, offset.
        let extra = &bytes[extra_start..extra_start + extra_len];
        let ex = Le(extra);
        let mut e = 0usize;
        while e + 4 <= extra.len() {
            let id = ex.u16(e).unwrap_or(0);
            let len = usize::from(ex.u16(e + 2).unwrap_or(0));
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut size, &mut comp_size, &mut local_offset] {
                    if *field == 0xffff_ffff {
                        *field = ex.u64(f).ok_or_else(|| bad("short zip64 extra field"))?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        entries.push(Entry { name, method, flags, crc, comp_size, size, local_offset });
        at = next;
    }

    let mut arrays = Vec::with_capacity(entries.len());
    for ent in &entries {
        let member_err = |detail: String| NpzError::BadZip { path: path.to_path_buf(), detail: format!("member `{}`: {detail}", ent.name) };
        let unsupported = |detail: String| NpzError::Unsupported { path: path.to_path_buf(), member: ent.name.clone(), detail };
        if ent.flags & 1 != 0 {
            return Err(unsupported("encrypted member".into()));
        }
        let lo = usize::try_from(ent.local_offset)
            .ok()
            .filter(|&o| le.u32(o) == Some(LOCAL_SIG))
            .ok_or_else(|| member_err("local header missing or outside the file".into()))?;
        // The local header's sizes may be zeroed (data descriptor) or 0xffffffff (zip64, as
        // NumPy writes them); only its name and extra lengths are needed to find the data.
        let lname = usize::from(le.u16(lo + 26).unwrap_or(0));
        let lextra = usize::from(le.u16(lo + 28).unwrap_or(0));
        let data_start = lo + 30 + lname + lextra;
        let raw = usize::try_from(ent.comp_size)
            .ok()
            .and_then(|n| bytes.get(data_start..data_start.checked_add(n)?))
            .ok_or_else(|| member_err("data runs past the end of the file (cut off?)".into()))?;
        let data: std::borrow::Cow<[u8]> = match ent.method {
            0 => raw.into(),
            8 => {
                // Bound the output by the recorded size (+1 to notice a lie) so a corrupt or
                // malicious stream cannot inflate without limit.
                let mut outv = Vec::with_capacity(ent.size.min(1 << 26) as usize);
                flate2::read::DeflateDecoder::new(raw)
                    .take(ent.size.saturating_add(1))
                    .read_to_end(&mut outv)
                    .map_err(|e| member_err(format!("corrupt deflate data: {e}")))?;
                outv.into()
            }
            m => return Err(unsupported(format!("compression method {m}"))),
        };
        if data.len() as u64 != ent.size {
            return Err(member_err(format!("{} bytes of data, the directory says {}", data.len(), ent.size)));
        }
        let actual = crc32fast::hash(&data);
        if actual != ent.crc {
            return Err(NpzError::CrcMismatch { path: path.to_path_buf(), member: ent.name.clone(), expected: ent.crc, actual });
        }
        let name = ent.name.strip_suffix(".npy").unwrap_or(&ent.name).to_string();
        arrays.push(decode_npy(path, &ent.name, name, &data)?);
    }
    Ok(arrays)
}

/// Parses one `.npy` member.
fn decode_npy(path: &Path, member: &str, name: String, b: &[u8]) -> Result<NpyArray, NpzError> {
    let bad = |detail: String| NpzError::BadNpy { path: path.to_path_buf(), member: member.to_string(), detail };
    let unsupported = |detail: String| NpzError::Unsupported { path: path.to_path_buf(), member: member.to_string(), detail };
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(bad("missing the \\x93NUMPY magic".into()));
    }
    let le = Le(b);
    let (header_len, header_start) = match b[6] {
        1 => (usize::from(le.u16(8).unwrap_or(0)), 10usize),
        2 | 3 => (le.u32(8).map_or(0, |v| v as usize), 12),
        v => return Err(unsupported(format!(".npy format version {v}.{}", b[7]))),
    };
    let header =
        b.get(header_start..header_start.saturating_add(header_len)).ok_or_else(|| bad("header runs past the end of the member".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    let h = parse_header(header).map_err(|e| bad(format!("{e} in header {header:?}")))?;
    let count =
        h.shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("shape {:?} overflows", h.shape)))?;
    let payload = &b[header_start + header_len..];
    let elem = match h.descr.as_str() {
        "<f4" => 4,
        "<f8" | "<i8" => 8,
        "|u1" | "<u1" | "u1" => 1,
        d => return Err(unsupported(format!("dtype {d:?}"))),
    };
    if count.checked_mul(elem) != Some(payload.len()) {
        return Err(bad(format!(
            "shape {:?} of {} needs {} bytes but the member holds {}",
            h.shape,
            h.descr,
            count.saturating_mul(elem),
            payload.len()
        )));
    }
    let mut data = match elem {
        4 => NpyData::F32(payload.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
        8 => {
            let words = payload.chunks_exact(8).map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                a
            });
            if h.descr == "<f8" {
                NpyData::F64(words.map(f64::from_le_bytes).collect())
            } else {
                NpyData::I64(words.map(i64::from_le_bytes).collect())
            }
        }
        _ => NpyData::U8(payload.to_vec()),
    };
    if h.fortran_order && h.shape.len() > 1 {
        data = match data {
            NpyData::F32(v) => NpyData::F32(fortran_to_c(&v, &h.shape)),
            NpyData::F64(v) => NpyData::F64(fortran_to_c(&v, &h.shape)),
            NpyData::I64(v) => NpyData::I64(fortran_to_c(&v, &h.shape)),
            NpyData::U8(v) => NpyData::U8(fortran_to_c(&v, &h.shape)),
        };
    }
    Ok(NpyArray { name, shape: h.shape, data })
}

/// Reorders column-major data to row-major.
fn fortran_to_c<T: Copy>(v: &[T], shape: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(v.len());
    let mut idx = vec![0usize; shape.len()];
    // Fortran strides: the first index is fastest.
    let mut strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        strides[k] = strides[k - 1] * shape[k - 1];
    }
    for _ in 0..v.len() {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(v[off]);
        // Advance the C-order multi-index (last index fastest).
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// Parses the Python dict literal of an `.npy` header:
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(s: &str) -> Result<Header, String> {
    let s = s.trim();
    let inner = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')).ok_or("not a dict literal")?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    let mut rest = inner.trim_start();
    while !rest.is_empty() {
        let (key, r) = take_quoted(rest).ok_or("expected a quoted key")?;
        let r = r.trim_start().strip_prefix(':').ok_or("expected ':'")?;
        let r = r.trim_start();
        match key {
            "descr" => {
                let (v, r2) = take_quoted(r).ok_or("descr must be a string (structured dtypes are not supported)")?;
                descr = Some(v.to_string());
                rest = r2;
            }
            "fortran_order" => {
                if let Some(r2) = r.strip_prefix("True") {
                    fortran = Some(true);
                    rest = r2;
                } else if let Some(r2) = r.strip_prefix("False") {
                    fortran = Some(false);
                    rest = r2;
                } else {
                    return Err("fortran_order must be True or False".into());
                }
            }
            "shape" => {
                let r2 = r.strip_prefix('(').ok_or("shape must be a tuple")?;
                let end = r2.find(')').ok_or("unterminated shape tuple")?;
                let dims = r2[..end]
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    // NumPy on some platforms wrote `3L` for longs in old Python 2 files.
                    .map(|t| t.trim_end_matches('L').parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| "shape entries must be non-negative integers")?;
                shape = Some(dims);
                rest = &r2[end + 1..];
            }
            other => return Err(format!("unexpected key '{other}'")),
        }
        rest = rest.trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(Header {
        descr: descr.ok_or("missing 'descr'")?,
        fortran_order: fortran.ok_or("missing 'fortran_order'")?,
        shape: shape.ok_or("missing 'shape'")?,
    })
}

/// Takes a `'...'` or `"..."` string from the front of `s`.
fn take_quoted(s: &str) -> Option<(&str, &str)> {
    let q = s.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &s[1..];
    let end = body.find(q)?;
    Some((&body[..end], &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atomic::tests::scratch_dir;

    fn sample() -> Vec<NpyArray> {
        vec![
            NpyArray::f32("w", &[2, 3], vec![1.0, -2.5, 3.25, f32::MIN_POSITIVE, 1e30, -0.0]),
            NpyArray::f64("scalar", &[], vec![std::f64::consts::PI]),
            NpyArray::i64("steps", &[4], vec![0, -1, i64::MAX, i64::MIN]),
            NpyArray::u8("mask", &[2, 2, 1], vec![0, 1, 255, 7]),
            NpyArray::f32("empty", &[0, 5], vec![]),
            NpyArray::f32("layer.1/bias", &[3], vec![f32::NAN, f32::INFINITY, 0.5]),
        ]
    }

    /// Equality that treats NaN as equal to NaN, bitwise.
    fn same(a: &[NpyArray], b: &[NpyArray]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.name == y.name
                    && x.shape == y.shape
                    && match (&x.data, &y.data) {
                        (NpyData::F32(p), NpyData::F32(q)) => p.iter().map(|v| v.to_bits()).eq(q.iter().map(|v| v.to_bits())),
                        (p, q) => p == q,
                    }
            })
    }

    #[test]
    fn round_trip() {
        let dir = scratch_dir("npz");
        let p = dir.join("ckpt.npz");
        let arrays = sample();
        write_npz(&p, &arrays).unwrap();
        let back = read_npz(&p).unwrap();
        assert!(same(&arrays, &back), "{back:?}");
        // Deterministic bytes.
        let first = std::fs::read(&p).unwrap();
        write_npz(&p, &arrays).unwrap();
        assert_eq!(first, std::fs::read(&p).unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn npy_data_is_64_byte_aligned_within_member() {
        let npy = encode_npy(&NpyArray::f32("a", &[7, 9, 11], vec![0.0; 693]));
        let hl = usize::from(u16::from_le_bytes([npy[8], npy[9]]));
        assert_eq!((10 + hl) % 64, 0);
        assert_eq!(npy[10 + hl - 1], b'\n');
    }

    #[test]
    fn writer_rejects_inconsistent_arrays() {
        let dir = scratch_dir("npz-bad-in");
        let p = dir.join("x.npz");
        for arrays in [
            vec![NpyArray::f32("a", &[2, 2], vec![1.0; 3])],
            vec![NpyArray::f32("", &[1], vec![1.0])],
            vec![NpyArray::f32("a", &[1], vec![1.0]), NpyArray::f64("a", &[1], vec![1.0])],
            vec![NpyArray::u8("a", &[usize::MAX, 2], vec![])],
        ] {
            let e = write_npz(&p, &arrays).unwrap_err();
            assert!(matches!(e, NpzError::InvalidArray { .. }), "{e:?}");
            assert!(e.to_string().contains("x.npz"));
        }
        assert!(!p.exists(), "nothing written on invalid input");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reader_rejects_garbage_without_panicking() {
        let dir = scratch_dir("npz-garbage");
        let p = dir.join("g.npz");
        let good = encode_npz(&p, &sample()).unwrap();
        let check = |bytes: &[u8]| -> NpzError {
            std::fs::write(&p, bytes).unwrap();
            let e = read_npz(&p).unwrap_err();
            assert!(e.to_string().contains("g.npz"), "{e}");
            e
        };
        assert!(matches!(check(b""), NpzError::BadZip { .. }));
        assert!(matches!(check(b"hello, world"), NpzError::BadZip { .. }));
        // Cut off: the EOCD is gone.
        assert!(matches!(check(&good[..good.len() / 2]), NpzError::BadZip { .. }));
        // A flipped data byte: CRC mismatch (byte 100 lies inside the first member's data).
        let mut flipped = good.clone();
        flipped[100] ^= 1;
        let e = check(&flipped);
        assert!(matches!(e, NpzError::CrcMismatch { .. }), "{e:?}");
        assert_eq!(e.code().unwrap().to_string(), "circ::npz::crc_mismatch");
        // Every single-byte corruption and every truncation: an error or a value, never a panic.
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] = b[i].wrapping_add(0x41);
            let _ = decode_npz(&p, &b);
            let _ = decode_npz(&p, &good[..i]);
        }
        // Missing file.
        let e = read_npz(&dir.join("none.npz")).unwrap_err();
        assert!(matches!(e, NpzError::Io { .. }));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_npy_member_is_reported() {
        let dir = scratch_dir("npz-badnpy");
        let p = dir.join("m.npz");
        let mut bytes = encode_npz(&p, &[NpyArray::f32("a", &[2], vec![1.0, 2.0])]).unwrap();
        // Patch the shape digit in the header from 2 to 3 and fix up the CRC so that only the
        // npy-level check can catch it.
        let pos = bytes.windows(4).position(|w| w == b"(2,)").unwrap();
        bytes[pos + 1] = b'3';
        let data_start = 30 + "a.npy".len();
        let cd = bytes.windows(4).position(|w| w == CENTRAL_SIG.to_le_bytes()).unwrap();
        let crc = crc32fast::hash(&bytes[data_start..cd]);
        bytes[14..18].copy_from_slice(&crc.to_le_bytes());
        bytes[cd + 16..cd + 20].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &bytes).unwrap();
        let e = read_npz(&p).unwrap_err();
        assert!(matches!(e, NpzError::BadNpy { .. }), "{e:?}");
        assert!(e.to_string().contains("a.npy"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_deflated_zip64_fortran_members() {
        // Hand-build what `np.savez_compressed` produces for a Fortran-ordered 2×3 f8 array:
        // a deflated member whose local header carries zip64 sizes.
        let header = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        npy.extend_from_slice(&(h.len() as u16).to_le_bytes());
        npy.extend_from_slice(h.as_bytes());
        // C-order [[1,2,3],[4,5,6]] stored column-major: 1,4,2,5,3,6.
        for v in [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0] {
            npy.extend_from_slice(&v.to_le_bytes());
        }
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut enc, &npy).unwrap();
        let comp = enc.finish().unwrap();
        let crc = crc32fast::hash(&npy);
        let name = b"f.npy";
        let mut z = Vec::new();
        put_u32(&mut z, LOCAL_SIG);
        for v in [45u16, 0, 8, 0, DOS_DATE_1980] {
            put_u16(&mut z, v);
        }
        put_u32(&mut z, crc);
        put_u32(&mut z, 0xffff_ffff);
        put_u32(&mut z, 0xffff_ffff);
        put_u16(&mut z, name.len() as u16);
        put_u16(&mut z, 20);
        z.extend_from_slice(name);
        put_u16(&mut z, 1);
        put_u16(&mut z, 16);
        z.extend_from_slice(&(npy.len() as u64).to_le_bytes());
        z.extend_from_slice(&(comp.len() as u64).to_le_bytes());
        z.extend_from_slice(&comp);
        let cd_off = z.len();
        put_u32(&mut z, CENTRAL_SIG);
        for v in [45u16, 45, 0, 8, 0, DOS_DATE_1980] {
            put_u16(&mut z, v);
        }
        put_u32(&mut z, crc);
        put_u32(&mut z, comp.len() as u32);
        put_u32(&mut z, npy.len() as u32);
        for v in [name.len() as u16, 0, 0, 0, 0] {
            put_u16(&mut z, v);
        }
        put_u32(&mut z, 0);
        put_u32(&mut z, 0);
        z.extend_from_slice(name);
        let cd_len = z.len() - cd_off;
        put_u32(&mut z, EOCD_SIG);
        for v in [0u16, 0, 1, 1] {
            put_u16(&mut z, v);
        }
        put_u32(&mut z, cd_len as u32);
        put_u32(&mut z, cd_off as u32);
        put_u16(&mut z, 0);
        let arrays = decode_npz(Path::new("mem.npz"), &z).unwrap();
        assert_eq!(arrays.len(), 1);
        assert_eq!(arrays[0].name, "f");
        assert_eq!(arrays[0].shape, vec![2, 3]);
        assert_eq!(arrays[0].data, NpyData::F64(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
    }

    /// The interpreter for the NumPy interop test: `$CIRC_PYTHON`, else `python3`.
    fn python() -> String {
        std::env::var("CIRC_PYTHON").unwrap_or_else(|_| "python3".into())
    }

    fn have_numpy() -> bool {
        std::process::Command::new(python()).args(["-c", "import numpy"]).output().map(|o| o.status.success()).unwrap_or(false)
    }

    #[test]
    fn numpy_reads_what_we_write_and_we_read_what_numpy_writes() {
        if !have_numpy() {
            crate::atomic::tests::skip_loudly(&format!("no numpy (`{} -c 'import numpy'` failed; set CIRC_PYTHON)", python()));
            return;
        }
        let dir = scratch_dir("npz-numpy");
        let ours = dir.join("ours.npz");
        write_npz(&ours, &sample()).unwrap();
        let theirs = dir.join("theirs.npz");
        let theirs_c = dir.join("theirs_c.npz");
        let script = r#"
import sys, numpy as np
z = np.load(sys.argv[1])
assert sorted(z.files) == sorted(['w', 'scalar', 'steps', 'mask', 'empty', 'layer.1/bias']), z.files
assert z['w'].dtype == np.float32 and z['w'].shape == (2, 3)
assert z['w'][0, 1] == -2.5 and z['w'][1, 1] == np.float32(1e30)
assert z['scalar'].shape == () and z['scalar'] == np.pi
assert z['steps'].dtype == np.int64 and list(z['steps']) == [0, -1, 2**63 - 1, -2**63]
assert z['mask'].dtype == np.uint8 and z['mask'].shape == (2, 2, 1) and z['mask'][1, 0, 0] == 255
assert z['empty'].shape == (0, 5)
b = z['layer.1/bias']
assert np.isnan(b[0]) and np.isinf(b[1]) and b[2] == 0.5
a = np.arange(12, dtype=np.float32).reshape(3, 4)
np.savez(sys.argv[2], a=a, f=np.asfortranarray(a.astype(np.float64)), i=np.arange(5))
np.savez_compressed(sys.argv[3], a=a, u=np.arange(6, dtype=np.uint8).reshape(2, 3))
print("ok")
"#;
        let out = std::process::Command::new(python()).arg("-c").arg(script).arg(&ours).arg(&theirs).arg(&theirs_c).output().unwrap();
        assert!(out.status.success(), "numpy failed: {}", String::from_utf8_lossy(&out.stderr));
        let a: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let t = read_npz(&theirs).unwrap();
        assert_eq!(t[0], NpyArray::f32("a", &[3, 4], a.clone()));
        assert_eq!(t[1], NpyArray::f64("f", &[3, 4], a.iter().map(|&v| f64::from(v)).collect()));
        assert_eq!(t[2], NpyArray::i64("i", &[5], vec![0, 1, 2, 3, 4]));
        let c = read_npz(&theirs_c).unwrap();
        assert_eq!(c[0], NpyArray::f32("a", &[3, 4], a));
        assert_eq!(c[1], NpyArray::u8("u", &[2, 3], vec![0, 1, 2, 3, 4, 5]));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

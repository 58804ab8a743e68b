//! Reading the ustar archives PostgreSQL's BASE_BACKUP sends: 512-byte
//! headers, data padded to 512 bytes, two zero blocks at the end. Only what
//! the server produces is accepted (regular files, directories, symlinks);
//! every field is checked, and input never panics.

use std::io::{self, BufRead};

pub const BLOCK: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Normalised relative path: no `.`, `..` or empty components.
    pub path: Vec<u8>,
    pub kind: Kind,
    pub size: u64,
}

fn field(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// A numeric field: octal text (space/NUL padded), or base-256 when the
/// high bit of the first byte is set (used for values that overflow octal).
fn number(b: &[u8], what: &str) -> Result<u64, String> {
    if let Some((&first, rest)) = b.split_first()
        && first & 0x80 != 0
    {
        let mut v: u64 = u64::from(first & 0x7f);
        for &c in rest {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(c)))
                .ok_or_else(|| format!("{what} overflows"))?;
        }
        return Ok(v);
    }
    let text = field(b);
    let digits: Vec<u8> = text.iter().copied().filter(|c| *c != b' ').collect();
    if digits.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&digits).map_err(|_| format!("{what} is not a number"))?;
    u64::from_str_radix(s, 8).map_err(|_| format!("{what} {s:?} is not octal"))
}

/// Normalises an archive path; `None` when it leaves the archive's root.
pub fn clean_path(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for part in raw.split(|&c| c == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return None,
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    if raw.first() == Some(&b'/') { None } else { Some(out) }
}

/// Parses one header block; `Ok(None)` for an all-zero block (the end).
pub fn parse_header(b: &[u8; BLOCK]) -> Result<Option<Header>, String> {
    if b.iter().all(|&c| c == 0) {
        return Ok(None);
    }
    let stored = number(&b[148..156], "header checksum")?;
    let sum: u64 = b.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { 32 } else { u64::from(c) }).sum();
    if stored != sum {
        return Err(format!("tar header checksum mismatch (stored {stored}, computed {sum})"));
    }
    let name = field(&b[0..100]);
    let mut raw_path = Vec::new();
    if &b[257..262] == b"ustar" {
        let prefix = field(&b[345..500]);
        if !prefix.is_empty() {
            raw_path.extend_from_slice(prefix);
            raw_path.push(b'/');
        }
    }
    raw_path.extend_from_slice(name);
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let path = clean_path(&raw_path).ok_or_else(|| format!("tar entry {shown:?} points outside the archive"))?;
    if path.is_empty() {
        return Err(format!("tar entry {shown:?} has an empty path"));
    }
    let size = number(&b[124..136], "size")?;
    let kind = match b[156] {
        b'0' | 0 => Kind::File,
        b'5' => Kind::Dir,
        b'2' => Kind::Symlink(field(&b[157..257]).to_vec()),
        t => return Err(format!("tar entry {shown:?} has unsupported type {:?}", t as char)),
    };
    let size = if kind == Kind::File { size } else { 0 };
    Ok(Some(Header { path, kind, size }))
}

/// Rounds a data length up to whole blocks.
pub fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// Reads exactly one block; `Ok(false)` on a clean end of input before it.
pub fn read_block(r: &mut impl BufRead, out: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut got = 0;
    while got < BLOCK {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside a tar header"));
        }
        let n = buf.len().min(BLOCK - got);
        out[got..got + n].copy_from_slice(&buf[..n]);
        r.consume(n);
        got += n;
    }
    Ok(true)
}

/// Discards `n` bytes.
pub fn skip(r: &mut impl BufRead, mut n: u64) -> io::Result<()> {
    while n > 0 {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "archive ends inside an entry"));
        }
        let k = (buf.len() as u64).min(n) as usize;
        r.consume(k);
        n -= k as u64;
    }
    Ok(())
}

/// A header for a regular file of `size` bytes at `path` (mode 0600), as
/// PostgreSQL writes them; a path over 100 bytes goes into ustar's prefix
/// field. `None` for a path that fits neither way.
pub fn file_header(path: &[u8], size: u64) -> Option<[u8; BLOCK]> {
    let (prefix, name) = if path.len() <= 100 {
        (&b""[..], path)
    } else {
        let cut = path.iter().rposition(|&c| c == b'/').filter(|&i| i <= 155 && path.len() - i - 1 <= 100)?;
        (&path[..cut], &path[cut + 1..])
    };
    let mut b = [0u8; BLOCK];
    b[..name.len()].copy_from_slice(name);
    b[100..108].copy_from_slice(b"0000600\0");
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(b"00000000000\0");
    b[156] = b'0';
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    b[148..156].copy_from_slice(b"        ");
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Some(b)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header as PostgreSQL writes it (ustar, octal fields).
    pub fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..108].copy_from_slice(b"0000600\0");
        b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        b[156] = kind;
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].copy_from_slice(b"        ");
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    #[test]
    fn parses_what_postgres_writes() {
        let h = parse_header(&header("./pg_wal/archive_status/", b'5', 0, "")).unwrap().unwrap();
        assert_eq!(h.path, b"pg_wal/archive_status");
        assert_eq!(h.kind, Kind::Dir);
        let h = parse_header(&header("base/5/16384", b'0', 688128, "")).unwrap().unwrap();
        assert_eq!((h.path.as_slice(), h.size), (&b"base/5/16384"[..], 688128));
        let h = parse_header(&header("pg_tblspc/16385", b'2', 0, "/srv/ts")).unwrap().unwrap();
        assert_eq!(h.kind, Kind::Symlink(b"/srv/ts".to_vec()));
        assert_eq!(parse_header(&[0u8; BLOCK]).unwrap(), None);
    }

    #[test]
    fn file_headers_parse_back() {
        let h = parse_header(&file_header(b"base/5/PGPITR_DELTA.0.16384", 8204).unwrap()).unwrap().unwrap();
        assert_eq!((h.path.as_slice(), h.size, h.kind), (&b"base/5/PGPITR_DELTA.0.16384"[..], 8204, Kind::File));
        let long = format!("PG_16_202307071/{}/{}", "1".repeat(60), "2".repeat(90));
        let h = parse_header(&file_header(long.as_bytes(), 0).unwrap()).unwrap().unwrap();
        assert_eq!(h.path, long.as_bytes());
        assert!(file_header("x".repeat(101).as_bytes(), 0).is_none());
    }

    #[test]
    fn rejects_bad_headers() {
        let mut b = header("base/1/1", b'0', 1, "");
        b[0] ^= 1;
        assert!(parse_header(&b).unwrap_err().contains("checksum"));
        assert!(parse_header(&header("../etc/passwd", b'0', 1, "")).unwrap_err().contains("outside"));
        assert!(parse_header(&header("/etc/passwd", b'0', 1, "")).unwrap_err().contains("outside"));
        assert!(parse_header(&header("x", b'3', 0, "")).unwrap_err().contains("unsupported"));
        assert!(parse_header(&header("./", b'5', 0, "")).unwrap_err().contains("empty"));
    }

    #[test]
    fn numbers() {
        assert_eq!(number(b"00000001750\0", "n").unwrap(), 1000);
        assert_eq!(number(b"   17 \0", "n").unwrap(), 15);
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x02; // 2 << 32
        assert_eq!(number(&big, "n").unwrap(), 2 << 32);
        assert!(number(b"9\0", "n").is_err());
        assert!(number(&[0xff; 12], "n").is_err());
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}

//! Parsers for the `/proc/PID/*` files checkpoint reads (pure functions, unit-tested), and
//! small readers around them.

use std::path::Path;

use super::{CrError, Result};

/// One line of `/proc/PID/maps` (or a header of `/proc/PID/smaps`), with smaps' VmFlags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `rwxp` / `rw-s` …
    pub perms: String,
    /// Offset into the file.
    pub offset: u64,
    /// The inode (0 for anonymous memory).
    pub inode: u64,
    /// The path or pseudo-name (`[heap]`), empty for anonymous memory.
    pub path: String,
    /// smaps `VmFlags` (empty when read from maps).
    pub vm_flags: Vec<String>,
}

impl MapEntry {
    /// Whether it is a shared mapping (`s` in perms).
    pub fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }

    /// `PROT_*` bits of its permissions.
    pub fn prot(&self) -> u32 {
        let p = self.perms.as_bytes();
        let mut prot = 0;
        if p.first() == Some(&b'r') {
            prot |= libc::PROT_READ as u32;
        }
        if p.get(1) == Some(&b'w') {
            prot |= libc::PROT_WRITE as u32;
        }
        if p.get(2) == Some(&b'x') {
            prot |= libc::PROT_EXEC as u32;
        }
        prot
    }
}

/// Parses one maps line; `None` when it is not one.
pub fn parse_map_line(line: &str) -> Option<MapEntry> {
    let mut rest = line;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let (start, end) = fields[0].split_once('-')?;
    Some(MapEntry {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms: fields[1].to_string(),
        offset: u64::from_str_radix(fields[2], 16).ok()?,
        inode: fields[4].parse().ok()?,
        path: rest.trim_start_matches(' ').to_string(),
        vm_flags: Vec::new(),
    })
}

/// Parses `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Option<Vec<MapEntry>> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_map_line)
        .collect()
}

/// Parses `/proc/PID/smaps`: the mappings with their VmFlags.
pub fn parse_smaps(text: &str) -> Option<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            out.last_mut()?.vm_flags = flags.split_whitespace().map(str::to_string).collect();
        } else if line.split(' ').next().is_some_and(|f| {
            f.contains('-') && f.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        }) {
            out.push(parse_map_line(line)?);
        }
    }
    Some(out)
}

/// The fields of `/proc/PID/stat` after the command name; `field(n)` is stat field `n`
/// (1-based, as in proc(5)).
#[derive(Debug)]
pub struct Stat(Vec<String>);

impl Stat {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Option<Stat> {
        let close = text.rfind(')')?;
        Some(Stat(
            text[close + 1..]
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        ))
    }

    /// The state letter (field 3): `R`, `S`, `D`, `T`, `t`, `Z`...
    pub fn state(&self) -> Option<char> {
        self.0.first()?.chars().next()
    }

    /// Field `n` (1-based, `n >= 3`) as a number.
    pub fn field(&self, n: usize) -> Option<u64> {
        self.0.get(n.checked_sub(3)?)?.parse().ok()
    }
}

/// `Key:\tvalue` lines of `/proc/PID/status`: the value of `key`.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// Four numbers of a `Uid:`/`Gid:` status line.
pub fn status_ids(status: &str, key: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = status_field(status, key)?
        .split_whitespace()
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    v.try_into().ok()
}

/// `pos` and `flags` (octal) of `/proc/PID/fdinfo/N`.
pub fn parse_fdinfo(text: &str) -> Option<(u64, u32)> {
    let pos = status_field(text, "pos")?.parse().ok()?;
    let flags = u32::from_str_radix(status_field(text, "flags")?, 8).ok()?;
    Some((pos, flags))
}

/// The words of `/proc/PID/auxv`, up to and including the `AT_NULL` pair.
pub fn parse_auxv(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    for pair in bytes.chunks_exact(16) {
        let k = u64::from_ne_bytes(pair[..8].try_into().expect("8 bytes"));
        let v = u64::from_ne_bytes(pair[8..].try_into().expect("8 bytes"));
        out.extend([k, v]);
        if k == 0 {
            break;
        }
    }
    out
}

/// Reads `/proc/PID/<name>` as text.
pub fn read_text(pid: i32, name: &str) -> Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{name}")).map_err(|source| CrError::Proc {
        pid,
        what: format!("reading /proc/{pid}/{name}"),
        source,
    })
}

/// Reads the link `/proc/PID/<name>`.
pub fn read_link(pid: i32, name: &str) -> Result<String> {
    std::fs::read_link(format!("/proc/{pid}/{name}"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|source| CrError::Proc {
            pid,
            what: format!("reading the link /proc/{pid}/{name}"),
            source,
        })
}

/// Reads `/proc/PID/<name>` as bytes.
pub fn read_bytes(pid: i32, name: &str) -> Result<Vec<u8>> {
    std::fs::read(Path::new(&format!("/proc/{pid}/{name}"))).map_err(|source| CrError::Proc {
        pid,
        what: format!("reading /proc/{pid}/{name}"),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_with_and_without_paths() {
        let text = "\
55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234                       /usr/bin/my prog
55d0c1a00000-55d0c1a21000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000001000 rw-s 00001000 00:05 77                         /dev/zero (deleted)
7f0000002000-7f0000003000 ---p 00000000 00:00 0 
";
        let m = parse_maps(text).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, "/usr/bin/my prog");
        assert_eq!(m[0].inode, 1234);
        assert_eq!(m[0].prot(), (libc::PROT_READ) as u32);
        assert_eq!(m[1].path, "[heap]");
        assert_eq!(m[1].end - m[1].start, 0x21000);
        assert!(m[2].shared());
        assert_eq!(m[2].offset, 0x1000);
        assert_eq!(m[3].path, "");
        assert_eq!(m[3].prot(), 0);
    }

    #[test]
    fn smaps_flags_attach_to_their_mapping() {
        let text = "\
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
VmFlags: rd wr mr mw me gd ac
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
VmFlags: rd ex mr mw me de sd
";
        let m = parse_smaps(text).unwrap();
        assert_eq!(m.len(), 2);
        assert!(m[0].vm_flags.iter().any(|f| f == "gd"));
        assert_eq!(m[1].path, "[vdso]");
        assert!(m[1].vm_flags.iter().any(|f| f == "de"));
    }

    #[test]
    fn stat_fields_after_a_hostile_comm() {
        let text = "42 (a) b) (c) S 1 42 42 0 -1 4194560 1 2 3 4 5";
        let s = Stat::parse(text).unwrap();
        assert_eq!(s.field(4), Some(1));
        assert_eq!(s.field(5), Some(42));
    }

    #[test]
    fn status_fdinfo_auxv() {
        let st = "Name:\tx\nUmask:\t0022\nUid:\t0\t0\t0\t0\nThreads:\t1\n";
        assert_eq!(status_field(st, "Threads"), Some("1"));
        assert_eq!(status_ids(st, "Uid"), Some([0; 4]));
        assert_eq!(
            parse_fdinfo("pos:\t12\nflags:\t02100002\nmnt_id:\t3\n"),
            Some((12, 0o2100002))
        );
        let mut a = Vec::new();
        for w in [6u64, 4096, 0, 0, 99, 99] {
            a.extend(w.to_ne_bytes());
        }
        assert_eq!(parse_auxv(&a), vec![6, 4096, 0, 0]);
    }
}

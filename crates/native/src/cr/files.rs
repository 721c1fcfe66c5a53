//! File descriptors: what a checkpoint saves of each ([`read_fds`]) and the injected calls
//! that give a restored process the same fds back ([`FilePlanner`]).
//!
//! Saved: files opened by path (regular files, directories, `/dev/null`, `/dev/zero`,
//! `/dev/urandom`, `/dev/random`) with flags and offset; fds that share an open file with an
//! earlier fd of the tree (`dup`, inherited across `fork`; found with `kcmp`) as references to
//! it; unnamed pipes with their buffered bytes (both ends inside the tree, or one — the other
//! end then reads as closed); FIFOs opened by path with their bytes; deleted-but-open
//! regular files up to 1 MiB with their contents (made again unnamed, `O_TMPFILE`);
//! eventfd, signalfd, timerfd and epoll instances; TCP and UDP sockets that are not
//! connected (listening, bound), bound to the same port again; established TCP connections
//! over loopback whose other end is in the tree, in repair mode (sequence numbers, both
//! queues, window, options); Unix sockets (see [`super::sockets`]): pairs inside the tree
//! with the data queued both ways (made again as a `socketpair`), listening and bound ones
//! (bound to their path — a stale socket file there is replaced — or abstract name again),
//! with their queued datagrams; connections that leave the tree (or whose peer is gone) come
//! back closed by their peer; standard input, output and error on a terminal, socket, a pipe
//! that leaves the tree or a file the checkpoint names as "stdio" (given a new file by the
//! restorer). Refused, naming the process and fd and what to do: netlink, packet and other
//! sockets, connected UDP sockets, Unix messages carrying fds (`SCM_RIGHTS`) or larger than
//! a page, connections waiting to be accepted, terminals beyond stdio, other devices and
//! anonymous inodes (inotify included), larger deleted files.

use std::collections::{BTreeMap, BTreeSet};

use tracing::debug;

use super::model::{Fd, FdKind, from_hex, to_hex};
use super::procfs;
use super::restore::{Expect, Op, Stdio};
use super::sockets;
use super::sys;
use super::{CrError, Result};

const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"];

fn refused(pid: i32, fd: i32, link: &str, hint: &str) -> CrError {
    CrError::Refused {
        pid,
        resource: format!("fd {fd} ({link})"),
        hint: hint.into(),
    }
}

/// The fd numbers of a process, in order.
pub fn fd_numbers(pid: i32) -> Result<Vec<i32>> {
    let mut nums: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|source| CrError::Proc {
            pid,
            what: "listing fds".into(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    nums.sort_unstable();
    Ok(nums)
}

fn pipe_inode(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Pipes with a read end and a write end inside the tree (by inode): the others leave it;
/// and every socket of the tree (by inode; pipes and sockets take their inode numbers from
/// one counter), to tell connections inside the tree from those that leave it.
pub fn internal_pipes(pids: &[i32]) -> Result<BTreeSet<u64>> {
    let mut ends: BTreeMap<u64, (bool, bool)> = BTreeMap::new();
    let mut sockets = BTreeSet::new();
    for &pid in pids {
        for fd in fd_numbers(pid)? {
            let Ok(link) = procfs::read_link(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if let Some(ino) = socket_inode(&link) {
                sockets.insert(ino);
                continue;
            }
            let Some(ino) = pipe_inode(&link) else {
                continue;
            };
            let (_, flags) = fdinfo(pid, fd)?;
            let e = ends.entry(ino).or_default();
            if flags as i32 & libc::O_ACCMODE == libc::O_WRONLY {
                e.1 = true;
            } else {
                e.0 = true;
            }
        }
    }
    let mut internal: BTreeSet<u64> = ends
        .into_iter()
        .filter(|(_, (r, w))| *r && *w)
        .map(|(i, _)| i)
        .collect();
    internal.extend(sockets);
    Ok(internal)
}

fn fdinfo(pid: i32, fd: i32) -> Result<(u64, u32)> {
    procfs::parse_fdinfo(&procfs::read_text(pid, &format!("fdinfo/{fd}"))?).ok_or_else(|| {
        CrError::Unexpected {
            pid,
            what: format!("unreadable /proc/PID/fdinfo/{fd}"),
        }
    })
}

/// The fds seen so far in a checkpoint of a tree, to find shared open files.
#[derive(Default)]
pub struct FileTable {
    seen: Vec<(i32, i32, String)>,
    pipes_with_data: BTreeSet<u64>,
    fifos_with_data: BTreeSet<u64>,
    stdio_paths: Vec<String>,
    /// Unix sockets by inode (`sock_diag`), per network namespace (by its inode).
    unix: BTreeMap<u64, BTreeMap<u64, sockets::UnixDiag>>,
}

impl FileTable {
    /// A table where `stdio_paths`, open as fd 0, 1 or 2, are saved as stdio.
    pub fn new(stdio_paths: &[std::path::PathBuf]) -> Self {
        FileTable {
            stdio_paths: stdio_paths
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect(),
            ..Default::default()
        }
    }
}

/// Every fd of `pid`, or a refusal. `internal` are the pipes with both ends in the tree.
pub fn read_fds(pid: i32, table: &mut FileTable, internal: &BTreeSet<u64>) -> Result<Vec<Fd>> {
    let mut fds = Vec::new();
    for fd in fd_numbers(pid)? {
        let link = procfs::read_link(pid, &format!("fd/{fd}"))?;
        let mut shared = None;
        for (p, f, l) in &table.seen {
            if *l == link && sys::same_file(pid, fd, *p, *f)? {
                shared = Some((*p, *f));
                break;
            }
        }
        let kind = match shared {
            Some((p, f)) => FdKind::Dup {
                pid: p,
                fd: f,
                cloexec: fdinfo(pid, fd)?.1 as i32 & libc::O_CLOEXEC != 0,
            },
            None => classify(pid, fd, &link, table, internal)?,
        };
        table.seen.push((pid, fd, link));
        debug!(pid, fd, ?kind, "fd");
        fds.push(Fd { fd, kind });
    }
    Ok(fds)
}

fn classify(
    pid: i32,
    fd: i32,
    link: &str,
    table: &mut FileTable,
    internal: &BTreeSet<u64>,
) -> Result<FdKind> {
    let (pos, flags) = fdinfo(pid, fd)?;
    let is_tty = link.starts_with("/dev/pts/") || link.starts_with("/dev/tty");
    let pipe = pipe_inode(link);
    if fd <= 2
        && (link.starts_with("socket:[")
            || is_tty
            || pipe.is_some_and(|i| !internal.contains(&i))
            || table.stdio_paths.iter().any(|p| p == link))
    {
        return Ok(FdKind::Stdio {
            was: link.to_string(),
        });
    }
    if let Some(inode) = pipe {
        let (data, size) = sys::peek_pipe(pid, fd)?;
        // The bytes go with the first end of the pipe in the image.
        let data = if table.pipes_with_data.insert(inode) {
            to_hex(&data)
        } else {
            String::new()
        };
        return Ok(FdKind::Pipe {
            inode,
            write: flags as i32 & libc::O_ACCMODE == libc::O_WRONLY,
            flags: flags & (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32,
            size,
            data,
        });
    }
    if let Some(kind) = link.strip_prefix("anon_inode:") {
        let info = procfs::read_text(pid, &format!("fdinfo/{fd}"))?;
        let field = |k: &str| procfs::status_field(&info, k).map(str::to_string);
        let cloexec_nonblock = flags & (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32;
        let bad = || CrError::Unexpected {
            pid,
            what: format!("unreadable fdinfo of fd {fd} ({link})"),
        };
        return match kind {
            "[eventfd]" => {
                let count = field("eventfd-count")
                    .and_then(|c| u64::from_str_radix(&c, 16).ok())
                    .ok_or_else(bad)?;
                let sem = field("eventfd-semaphore").as_deref() == Some("1");
                Ok(FdKind::EventFd {
                    count,
                    flags: cloexec_nonblock | if sem { libc::EFD_SEMAPHORE as u32 } else { 0 },
                })
            }
            "[signalfd]" => Ok(FdKind::SignalFd {
                mask: field("sigmask")
                    .and_then(|m| u64::from_str_radix(&m, 16).ok())
                    .ok_or_else(bad)?,
                flags: cloexec_nonblock,
            }),
            "[timerfd]" => {
                let pair = |k: &str| -> Option<u64> {
                    let v = field(k)?;
                    let (s, ns) = v.trim_matches(|c| c == '(' || c == ')').split_once(',')?;
                    Some(
                        s.trim().parse::<u64>().ok()? * 1_000_000_000
                            + ns.trim().parse::<u64>().ok()?,
                    )
                };
                Ok(FdKind::TimerFd {
                    clockid: field("clockid")
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(bad)?,
                    flags: cloexec_nonblock,
                    value_ns: pair("it_value").ok_or_else(bad)?,
                    interval_ns: pair("it_interval").ok_or_else(bad)?,
                    ticks: field("ticks")
                        .and_then(|t| t.parse().ok())
                        .ok_or_else(bad)?,
                })
            }
            "[eventpoll]" => {
                let mut watches = Vec::new();
                for line in info.lines().filter(|l| l.starts_with("tfd:")) {
                    let w: Vec<&str> = line.split_whitespace().collect();
                    let get = |k: &str| {
                        w.iter()
                            .position(|x| *x == k)
                            .and_then(|i| w.get(i + 1))
                            .copied()
                    };
                    let tfd: i32 = get("tfd:").and_then(|x| x.parse().ok()).ok_or_else(bad)?;
                    let events = get("events:")
                        .and_then(|x| u32::from_str_radix(x, 16).ok())
                        .ok_or_else(bad)?;
                    let data = get("data:")
                        .and_then(|x| u64::from_str_radix(x, 16).ok())
                        .ok_or_else(bad)?;
                    let ino = line
                        .split_whitespace()
                        .find_map(|x| x.strip_prefix("ino:"))
                        .and_then(|x| u64::from_str_radix(x, 16).ok());
                    // The watched file must still be that fd of this process.
                    let here = std::fs::metadata(format!("/proc/{pid}/fd/{tfd}"));
                    use std::os::unix::fs::MetadataExt;
                    if here.as_ref().map(|m| m.ino()).ok() != ino {
                        return Err(refused(
                            pid,
                            fd,
                            link,
                            &format!(
                                "it watches a file that is no longer fd {tfd} of the process \
                                 (closed or moved after epoll_ctl)"
                            ),
                        ));
                    }
                    watches.push((tfd, events, data));
                }
                Ok(FdKind::Epoll {
                    flags: flags & libc::O_CLOEXEC as u32,
                    watches,
                })
            }
            "inotify" => Err(refused(
                pid,
                fd,
                link,
                "inotify instances are not supported (their watches are not restored); \
                 stop watching (close it) before the checkpoint",
            )),
            _ => Err(refused(
                pid,
                fd,
                link,
                "of anonymous inodes only eventfd, signalfd, timerfd and epoll are supported",
            )),
        };
    }
    if link.starts_with("socket:[") {
        return socket(pid, fd, link, flags, table, internal);
    }
    if link.starts_with('/') && !link.ends_with(" (deleted)") {
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|_| refused(pid, fd, link, "its file cannot be stat'ed"))?;
        if md.is_file() || md.is_dir() || DEVICES.contains(&link) {
            return Ok(FdKind::Path {
                path: link.to_string(),
                flags,
                pos,
                seekable: md.is_file(),
            });
        }
        if md.file_type().is_fifo_like() {
            use std::os::unix::fs::MetadataExt;
            let (data, _) = sys::peek_pipe(pid, fd)?;
            let inode = md.ino();
            let data = if table.fifos_with_data.insert(inode) {
                to_hex(&data)
            } else {
                String::new()
            };
            return Ok(FdKind::Fifo {
                path: link.to_string(),
                flags,
                inode,
                data,
            });
        }
        return Err(refused(
            pid,
            fd,
            link,
            "of devices only /dev/null, /dev/zero, /dev/urandom and /dev/random are supported",
        ));
    }
    if let Some(path) = link
        .strip_suffix(" (deleted)")
        .filter(|p| p.starts_with('/'))
    {
        return deleted_file(pid, fd, link, path, flags, pos);
    }
    let hint = if link.starts_with("socket:[") {
        "sockets are not supported yet (but as stdin, stdout or stderr)"
    } else {
        "this kind of file is not supported"
    };
    Err(refused(pid, fd, link, hint))
}

/// The largest deleted-but-open file whose contents a checkpoint saves.
const MAX_DELETED_FILE: u64 = 1 << 20;

/// A regular file deleted while open: its contents go into the image.
fn deleted_file(pid: i32, fd: i32, link: &str, path: &str, flags: u32, pos: u64) -> Result<FdKind> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let proc_path = format!("/proc/{pid}/fd/{fd}");
    let md = std::fs::metadata(&proc_path)
        .map_err(|_| refused(pid, fd, link, "its file cannot be stat'ed"))?;
    if !md.is_file() {
        return Err(refused(
            pid,
            fd,
            link,
            "of deleted files only regular files are supported",
        ));
    }
    if md.len() > MAX_DELETED_FILE {
        return Err(refused(
            pid,
            fd,
            link,
            &format!(
                "the deleted file holds {} bytes; its contents are saved in the image only up \
                 to {MAX_DELETED_FILE} bytes — close it (or keep it linked) before the checkpoint",
                md.len()
            ),
        ));
    }
    let mut data = Vec::with_capacity(md.len() as usize);
    std::fs::File::open(&proc_path)
        .and_then(|f| f.take(MAX_DELETED_FILE + 1).read_to_end(&mut data))
        .map_err(|source| CrError::Proc {
            pid,
            what: format!("reading the deleted file at fd {fd}"),
            source,
        })?;
    Ok(FdKind::DeletedFile {
        path: path.to_string(),
        flags,
        pos,
        mode: md.mode() & 0o7777,
        data: to_hex(&data),
    })
}

/// The largest message (datagram, seqpacket) of a receive queue that a restore can write
/// back: the call's data page holds it and an address.
const MAX_MESSAGE: usize = 3968;

/// A socket: Internet sockets that are not connected are saved; TCP connections over
/// loopback with both ends in the tree are kept (repair mode); Unix sockets are saved with
/// their queues (pairs inside the tree, listening and bound ones); connections that leave
/// the tree come back closed.
fn socket(
    pid: i32,
    fd: i32,
    link: &str,
    flags: u32,
    table: &mut FileTable,
    internal: &BTreeSet<u64>,
) -> Result<FdKind> {
    let sock = sys::steal_fd(pid, fd)?;
    let opt = |level, name| {
        sys::sockopt_int(&sock, level, name).map_err(|source| CrError::Proc {
            pid,
            what: format!("reading socket option {name} of fd {fd}"),
            source,
        })
    };
    let family = opt(libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    let sock_type = opt(libc::SOL_SOCKET, libc::SO_TYPE)?;
    let flags = flags & (libc::O_NONBLOCK | libc::O_CLOEXEC) as u32;
    if family == libc::AF_UNIX {
        return unix_socket(pid, fd, link, flags, &sock, table, internal);
    }
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(refused(
            pid,
            fd,
            link,
            "of sockets only TCP, UDP and Unix ones are supported (not netlink or packet \
             sockets); close it before the checkpoint",
        ));
    }
    let connected = sys::sock_addr(&sock, true).is_ok();
    if connected {
        if sock_type == libc::SOCK_STREAM {
            let local = sys::sock_addr(&sock, false).unwrap_or_default();
            let inode = socket_inode(link).unwrap_or(0);
            let inside = is_loopback(&local)
                && sockets::tcp_peer_inode(pid, inode).is_some_and(|p| internal.contains(&p));
            if inside {
                let remote = sys::sock_addr(&sock, true).unwrap_or_default();
                let st = sockets::tcp_repair_dump(&sock).map_err(|source| CrError::Proc {
                    pid,
                    what: format!("reading the TCP connection at fd {fd} in repair mode"),
                    source,
                })?;
                if let Some(st) = st {
                    return Ok(FdKind::TcpConnection {
                        family,
                        flags,
                        local: to_hex(&local),
                        remote: to_hex(&remote),
                        send_seq: st.send_seq,
                        recv_seq: st.recv_seq,
                        send_queue: to_hex(&st.send_queue),
                        unsent: st.unsent,
                        recv_queue: to_hex(&st.recv_queue),
                        mss: st.mss,
                        wscale: st.wscale,
                        sack: st.sack,
                        timestamps: st.timestamps,
                        timestamp: st.timestamp,
                        window: st.window,
                        nodelay: st.nodelay,
                        reuse_addr: st.reuse_addr,
                    });
                }
            }
            return Ok(FdKind::ClosedSocket {
                flags,
                was: link.to_string(),
            });
        }
        return Err(refused(
            pid,
            fd,
            link,
            "connected datagram sockets are not supported yet",
        ));
    }
    let addr = sys::sock_addr(&sock, false).ok().filter(|a| {
        // Unbound: port 0.
        a.len() >= 4 && u16::from_be_bytes([a[2], a[3]]) != 0
    });
    Ok(FdKind::InetSocket {
        family,
        sock_type,
        protocol: opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)?,
        flags,
        addr: addr.map(|a| to_hex(&a)),
        listening: opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 0,
        reuse_addr: opt(libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0,
        reuse_port: opt(libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0,
        v6only: family == libc::AF_INET6 && opt(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 0,
    })
}

/// Whether a raw `sockaddr` is a loopback address (127.0.0.0/8, `::1`, `::ffff:127.x`).
fn is_loopback(addr: &[u8]) -> bool {
    let family = addr
        .get(..2)
        .map(|f| u16::from_ne_bytes([f[0], f[1]]) as i32);
    match family {
        Some(libc::AF_INET) => addr.get(4) == Some(&127),
        Some(libc::AF_INET6) if addr.len() >= 24 => {
            let ip = &addr[8..24];
            (ip[..15].iter().all(|b| *b == 0) && ip[15] == 1)
                || (ip[..10].iter().all(|b| *b == 0) && ip[10..12] == [0xff, 0xff] && ip[12] == 127)
        }
        _ => false,
    }
}

/// A Unix socket, from `sock_diag` of its network namespace and its peeked queue.
fn unix_socket(
    pid: i32,
    fd: i32,
    link: &str,
    flags: u32,
    sock: &std::os::fd::OwnedFd,
    table: &mut FileTable,
    internal: &BTreeSet<u64>,
) -> Result<FdKind> {
    use std::os::unix::fs::MetadataExt;
    let inode = socket_inode(link).unwrap_or(0);
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .map_err(|source| CrError::Proc {
            pid,
            what: "reading its network namespace".into(),
            source,
        })?;
    if let std::collections::btree_map::Entry::Vacant(e) = table.unix.entry(netns) {
        e.insert(sockets::unix_diag(pid).map_err(|source| CrError::Proc {
            pid,
            what: "listing Unix sockets (sock_diag)".into(),
            source,
        })?);
    }
    let all = &table.unix[&netns];
    let Some(d) = all.get(&inode).cloned() else {
        return Err(refused(
            pid,
            fd,
            link,
            "sock_diag does not list this Unix socket (is UNIX_DIAG built?)",
        ));
    };
    let closed = || {
        Ok(FdKind::ClosedSocket {
            flags,
            was: link.to_string(),
        })
    };
    let stream = d.sock_type != libc::SOCK_DGRAM;
    let listening = d.state == sockets::LISTEN;
    if listening && !d.icons.is_empty() {
        return Err(refused(
            pid,
            fd,
            link,
            &format!(
                "{} connection(s) wait to be accepted on this listening Unix socket; \
                 checkpoint again once the process has accepted them",
                d.icons.len()
            ),
        ));
    }
    let peer = match d.peer {
        Some(p) if internal.contains(&p) => {
            if all.get(&p).and_then(|pd| pd.peer) != Some(inode) {
                return Err(refused(
                    pid,
                    fd,
                    link,
                    "a datagram socket connected to a socket of the tree that is not \
                     connected back is not supported yet; use a socketpair or sendto",
                ));
            }
            Some(p)
        }
        Some(p) if all.values().any(|o| o.icons.contains(&p)) => {
            return Err(refused(
                pid,
                fd,
                link,
                "its connection waits to be accepted by a listening socket; checkpoint \
                 again once it is accepted",
            ));
        }
        // Connected to a socket outside the tree, or whose peer is gone.
        Some(_) => return closed(),
        None if stream && d.state == sockets::ESTABLISHED => return closed(),
        None => None,
    };
    let queue = if listening {
        Vec::new()
    } else {
        sockets::peek_unix_queue(sock).map_err(|e| match e {
            sockets::PeekError::Rights => refused(
                pid,
                fd,
                link,
                "a message in its queue carries file descriptors (SCM_RIGHTS); checkpoint \
                 again once the process has received them",
            ),
            sockets::PeekError::Io(source) => CrError::Proc {
                pid,
                what: format!("peeking the queue of the Unix socket at fd {fd}"),
                source,
            },
        })?
    };
    if (!stream || d.sock_type == libc::SOCK_SEQPACKET)
        && let Some(m) = queue.iter().find(|m| m.len() > MAX_MESSAGE)
    {
        return Err(refused(
            pid,
            fd,
            link,
            &format!(
                "a queued message of {} bytes is larger than a restore writes back \
                     ({MAX_MESSAGE}); checkpoint again once it is read",
                m.len()
            ),
        ));
    }
    let name = match (&peer, &d.name) {
        (None, Some(n)) if n.first().is_some_and(|b| *b != 0) => {
            let path = String::from_utf8_lossy(n)
                .trim_end_matches('\0')
                .to_string();
            let abs = if path.starts_with('/') {
                path.clone()
            } else {
                let cwd = procfs::read_link(pid, "cwd")?;
                format!("{}/{path}", cwd.trim_end_matches('/'))
            };
            let here = std::fs::symlink_metadata(format!("/proc/{pid}/root{abs}"));
            if here.map(|m| m.ino()).ok() != d.vfs_ino.map(u64::from) {
                return Err(refused(
                    pid,
                    fd,
                    link,
                    &format!(
                        "its socket file {abs} was removed or replaced since it was bound; \
                         a restore could not bind it again"
                    ),
                ));
            }
            if abs.len() >= 108 {
                return Err(refused(
                    pid,
                    fd,
                    link,
                    &format!("its path {abs} is too long to bind again (107 bytes at most)"),
                ));
            }
            Some(abs.into_bytes())
        }
        (None, Some(n)) => Some(n.clone()),
        _ => None,
    };
    if peer.is_none() && name.is_none() && !queue.is_empty() {
        return Err(refused(
            pid,
            fd,
            link,
            "an unbound, unconnected Unix socket with queued messages cannot be refilled; \
             checkpoint again once they are read",
        ));
    }
    if peer.is_none() && name.is_none() && d.sock_type == libc::SOCK_DGRAM && d.peer.is_some() {
        return closed();
    }
    Ok(FdKind::UnixSocket {
        sock_type: d.sock_type,
        flags,
        inode,
        peer,
        name: name.map(|n| to_hex(&n)),
        listening,
        queue: queue.iter().map(|m| to_hex(m)).collect(),
    })
}

/// A saved socket address for a restore in a new network: an address that is neither
/// loopback nor unspecified (the Pod's old IP) becomes unspecified, the port stays.
pub fn rebind_address(addr: &[u8]) -> Vec<u8> {
    let mut a = addr.to_vec();
    let family = a.get(..2).map(|f| u16::from_ne_bytes([f[0], f[1]]) as i32);
    match family {
        Some(libc::AF_INET) if a.len() >= 8 && a[4] != 127 => a[4..8].fill(0),
        Some(libc::AF_INET6) if a.len() >= 24 => {
            let ip = &a[8..24];
            let loopback = ip[..15].iter().all(|b| *b == 0) && ip[15] == 1;
            let v4_loopback =
                ip[..10].iter().all(|b| *b == 0) && ip[10..12] == [0xff, 0xff] && ip[12] == 127;
            if !loopback && !v4_loopback {
                a[8..24].fill(0);
            }
        }
        _ => {}
    }
    a
}

trait FifoLike {
    fn is_fifo_like(&self) -> bool;
}

impl FifoLike for std::fs::FileType {
    fn is_fifo_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_fifo()
    }
}

pub(crate) use planner::FilePlanner;

mod planner {
    use super::*;

    /// Flags `open(2)` takes back from fdinfo's.
    const OPEN_FLAGS_KEPT: i32 = libc::O_ACCMODE
        | libc::O_APPEND
        | libc::O_NONBLOCK
        | libc::O_DSYNC
        | libc::O_SYNC
        | libc::O_DIRECT
        | libc::O_LARGEFILE
        | libc::O_DIRECTORY
        | libc::O_NOFOLLOW
        | libc::O_NOATIME
        | libc::O_CLOEXEC
        | libc::O_PATH;

    /// The backlog of restored listening sockets (the kernel caps it at `somaxconn`).
    const LISTEN_BACKLOG: u64 = 4096;

    /// Where a pipe was created: the process and the fds holding its read and write ends.
    #[derive(Clone, Copy, Debug)]
    struct PipeAt {
        pid: i32,
        read: i32,
        write: i32,
    }

    /// Plans the fds of every process of a tree, in tree order, tracking which fd numbers
    /// are open in each process (so every fd a call returns is known in advance) and which
    /// temporary fds must be closed at the end.
    pub struct FilePlanner<'a> {
        data: u64,
        stdio: &'a Stdio,
        pipes: BTreeMap<u64, PipeAt>,
        /// Per process: the fd numbers open now.
        open: BTreeMap<i32, BTreeSet<i32>>,
        /// Per process: temporaries to close once every process has its fds.
        temps: BTreeMap<i32, Vec<i32>>,
        /// Unix socket pairs made for a socket whose peer comes later: by the peer's inode.
        unix_pairs: BTreeMap<u64, PairAt>,
        /// FIFOs opened so far (a read-write fd of each is kept open until the end, so
        /// that no open blocks and the bytes stay), by inode.
        fifos: BTreeSet<u64>,
        /// Calls that take TCP connections out of repair mode, once both ends exist (a
        /// connection out of repair mode sends, and its peer must be there to answer).
        finish: Vec<Op>,
    }

    /// Where a Unix socket pair was made for its first end.
    #[derive(Clone, Copy, Debug)]
    struct PairAt {
        pid: i32,
        /// The fd holding the peer's end, parked.
        parked: i32,
        /// The first end's fd.
        first: i32,
    }

    /// The largest write of one injected `sendto`: the call's data page.
    const SEND_CHUNK: usize = 4096;
    /// `TCP_REPAIR_OPTIONS` codes.
    const TCPOPT_MSS: u32 = 2;
    const TCPOPT_WINDOW: u32 = 3;
    const TCPOPT_SACK_PERM: u32 = 4;
    const TCPOPT_TIMESTAMP: u32 = 8;

    use super::super::restore::{call, call_with};

    impl<'a> FilePlanner<'a> {
        /// A planner writing call arguments at `data` (a page free in every process).
        pub fn new(data: u64, stdio: &'a Stdio) -> Self {
            FilePlanner {
                data,
                stdio,
                pipes: BTreeMap::new(),
                open: BTreeMap::new(),
                temps: BTreeMap::new(),
                unix_pairs: BTreeMap::new(),
                fifos: BTreeSet::new(),
                finish: Vec::new(),
            }
        }

        fn lowest_free(&self, pid: i32, avoid: &BTreeSet<i32>) -> i32 {
            let open = self.open.get(&pid);
            (0..)
                .find(|n| !open.is_some_and(|o| o.contains(n)) && !avoid.contains(n))
                .expect("a free fd")
        }

        fn lowest_open_slot(&self, pid: i32) -> i32 {
            self.lowest_free(pid, &BTreeSet::new())
        }

        fn opened(&mut self, pid: i32, fd: i32) {
            self.open.entry(pid).or_default().insert(fd);
        }

        fn closed(&mut self, pid: i32, fd: i32) {
            self.open.entry(pid).or_default().remove(&fd);
        }

        /// Moves the fd `from` (just created, the lowest free) to `to`.
        fn settle(&mut self, ops: &mut Vec<Op>, pid: i32, from: i32, to: i32, cloexec: bool) {
            if from != to {
                ops.push(call(
                    pid,
                    libc::SYS_dup3,
                    [
                        from as u64,
                        to as u64,
                        if cloexec { libc::O_CLOEXEC as u64 } else { 0 },
                        0,
                        0,
                        0,
                    ],
                    Expect::Eq(to as u64),
                    format!("dup3 of fd {from} to fd {to}"),
                ));
                ops.push(call(
                    pid,
                    libc::SYS_close,
                    [from as u64, 0, 0, 0, 0, 0],
                    Expect::Zero,
                    format!("close of fd {from}"),
                ));
                self.closed(pid, from);
            }
            self.opened(pid, to);
        }

        /// Moves the just-opened `fd` of `pid` to the lowest number that is no final fd of
        /// the process (so that no later fd clobbers it), if it is one.
        fn park(&mut self, ops: &mut Vec<Op>, pid: i32, fd: i32, finals: &BTreeSet<i32>) -> i32 {
            if !finals.contains(&fd) {
                return fd;
            }
            let park = self.lowest_free(pid, finals);
            ops.push(call(
                pid,
                libc::SYS_dup3,
                [fd as u64, park as u64, libc::O_CLOEXEC as u64, 0, 0, 0],
                Expect::Eq(park as u64),
                format!("dup3 of fd {fd} to the temporary fd {park}"),
            ));
            ops.push(call(
                pid,
                libc::SYS_close,
                [fd as u64, 0, 0, 0, 0, 0],
                Expect::Zero,
                format!("close of fd {fd}"),
            ));
            self.closed(pid, fd);
            self.opened(pid, park);
            park
        }

        /// `sendto` of `bytes` on `fd` of `pid` (`MSG_DONTWAIT`), in chunks of the data page
        /// (a stream), or as one message; `to`: a destination address.
        fn send(
            &self,
            ops: &mut Vec<Op>,
            pid: i32,
            fd: i32,
            bytes: &[u8],
            to: Option<&[u8]>,
            what: &str,
        ) {
            let chunks: Vec<&[u8]> = if bytes.is_empty() {
                vec![bytes]
            } else {
                bytes
                    .chunks(SEND_CHUNK - to.map_or(0, |a| a.len()))
                    .collect()
            };
            for c in chunks {
                let mut blob = c.to_vec();
                let (addr, alen) = match to {
                    Some(a) => {
                        blob.extend(a);
                        (self.data + c.len() as u64, a.len() as u64)
                    }
                    None => (0, 0),
                };
                ops.push(call_with(
                    pid,
                    libc::SYS_sendto,
                    [
                        fd as u64,
                        self.data,
                        c.len() as u64,
                        libc::MSG_DONTWAIT as u64,
                        addr,
                        alen,
                    ],
                    (self.data, blob),
                    Expect::Eq(c.len() as u64),
                    format!("sendto of {} bytes on fd {fd} ({what})", c.len()),
                ));
            }
        }

        /// Removes whatever non-directory is at `path` (the socket file of the checkpointed
        /// socket, left behind), so that a socket can be bound there: a placeholder renamed
        /// over it (which succeeds whether there is one or not), then unlinked.
        fn replace_path(&mut self, ops: &mut Vec<Op>, pid: i32, path: &str) -> Result<()> {
            let tmp = format!("{path}.podsnap-restore");
            let low = self.lowest_open_slot(pid);
            ops.push(call_with(
                pid,
                libc::SYS_openat,
                [
                    libc::AT_FDCWD as u64,
                    self.data,
                    (libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC) as u64,
                    0o600,
                    0,
                    0,
                ],
                (self.data, super::super::restore::cstr(&tmp)?),
                Expect::Eq(low as u64),
                format!("creation of the placeholder {tmp}"),
            ));
            ops.push(call(
                pid,
                libc::SYS_close,
                [low as u64, 0, 0, 0, 0, 0],
                Expect::Zero,
                format!("close of the placeholder {tmp}"),
            ));
            let mut both = super::super::restore::cstr(&tmp)?;
            let at = self.data + both.len() as u64;
            both.extend(super::super::restore::cstr(path)?);
            ops.push(call_with(
                pid,
                libc::SYS_renameat,
                [
                    libc::AT_FDCWD as u64,
                    self.data,
                    libc::AT_FDCWD as u64,
                    at,
                    0,
                    0,
                ],
                (self.data, both),
                Expect::Zero,
                format!("rename of the placeholder over {path}"),
            ));
            ops.push(call_with(
                pid,
                libc::SYS_unlinkat,
                [libc::AT_FDCWD as u64, at, 0, 0, 0, 0],
                (self.data, {
                    let mut b = super::super::restore::cstr(&tmp)?;
                    b.extend(super::super::restore::cstr(path)?);
                    b
                }),
                Expect::Zero,
                format!("unlink of {path} before binding a socket there"),
            ));
            Ok(())
        }

        fn setsockopt(
            &self,
            ops: &mut Vec<Op>,
            pid: i32,
            fd: i32,
            (level, name): (i32, i32),
            value: Vec<u8>,
            what: &str,
        ) {
            let len = value.len() as u64;
            ops.push(call_with(
                pid,
                libc::SYS_setsockopt,
                [fd as u64, level as u64, name as u64, self.data, len, 0],
                (self.data, value),
                Expect::Zero,
                format!("setsockopt {what} of fd {fd}"),
            ));
        }

        /// The calls that give process `pid` its fds, lowest number first.
        pub fn plan(&mut self, pid: i32, fds: &[Fd], ops: &mut Vec<Op>) -> Result<()> {
            let finals: BTreeSet<i32> = fds.iter().map(|f| f.fd).collect();
            let data = self.data;
            let stdio = self.stdio;
            let paths = match stdio {
                Stdio::Paths(p) => Some(p),
                Stdio::Inherit => None,
            };
            for f in fds {
                if let (FdKind::Stdio { .. }, None) = (&f.kind, paths) {
                    // Kept from the seed.
                    self.opened(pid, f.fd);
                    continue;
                }
                let low = self.lowest_open_slot(pid);
                let cloexec_of = |flags: u32| flags as i32 & libc::O_CLOEXEC != 0;
                match &f.kind {
                    FdKind::Path { .. } | FdKind::Stdio { .. } => {
                        let (path, flags, pos) = match &f.kind {
                            FdKind::Path {
                                path,
                                flags,
                                pos,
                                seekable,
                            } => (
                                path.as_str(),
                                *flags as i32 & OPEN_FLAGS_KEPT,
                                seekable.then_some(*pos).filter(|p| *p != 0),
                            ),
                            _ => {
                                let Some(p) = paths.and_then(|p| p.get(f.fd as usize)) else {
                                    return Err(CrError::Incompatible(format!(
                                        "stdio fd {}",
                                        f.fd
                                    )));
                                };
                                let flags = if f.fd == 0 {
                                    libc::O_RDONLY
                                } else {
                                    libc::O_WRONLY | libc::O_APPEND
                                };
                                (p.as_str(), flags, None)
                            }
                        };
                        ops.push(call_with(
                            pid,
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, data, flags as u64, 0, 0, 0],
                            (data, super::super::restore::cstr(path)?),
                            Expect::Eq(low as u64),
                            format!("open of {path} for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, flags & libc::O_CLOEXEC != 0);
                        if let Some(pos) = pos {
                            ops.push(call(
                                pid,
                                libc::SYS_lseek,
                                [f.fd as u64, pos, libc::SEEK_SET as u64, 0, 0, 0],
                                Expect::Eq(pos),
                                format!("lseek of fd {} to {pos}", f.fd),
                            ));
                        }
                    }
                    FdKind::Dup {
                        pid: owner,
                        fd: ofd,
                        cloexec,
                    } => {
                        self.take_from(ops, pid, *owner, *ofd, f.fd)?;
                        // Close-on-exec belongs to the fd, not the open file.
                        ops.push(call(
                            pid,
                            libc::SYS_fcntl,
                            [
                                f.fd as u64,
                                libc::F_SETFD as u64,
                                if *cloexec { libc::FD_CLOEXEC as u64 } else { 0 },
                                0,
                                0,
                                0,
                            ],
                            Expect::Zero,
                            format!("F_SETFD of fd {}", f.fd),
                        ));
                    }
                    FdKind::Pipe {
                        inode,
                        write,
                        flags,
                        size,
                        data: bytes,
                    } => {
                        if let Some(at) = self.pipes.get(inode).copied() {
                            // The other end, created with the first: take it from there.
                            let from = if *write { at.write } else { at.read };
                            self.take_from(ops, pid, at.pid, from, f.fd)?;
                            set_flags(ops, pid, f.fd, *flags);
                            continue;
                        }
                        // Create it; the end this fd is goes to its number, the other end is
                        // parked (until every process has its fds) at a number that is no
                        // final fd of this process, so that no later fd clobbers it.
                        let r = self.lowest_open_slot(pid);
                        self.opened(pid, r);
                        let w = self.lowest_open_slot(pid);
                        self.opened(pid, w);
                        ops.push(call_with(
                            pid,
                            libc::SYS_pipe2,
                            [data, libc::O_CLOEXEC as u64, 0, 0, 0, 0],
                            (data, vec![0; 8]),
                            Expect::Zero,
                            format!("pipe2 for fd {} (ends {r} and {w})", f.fd),
                        ));
                        ops.push(call(
                            pid,
                            libc::SYS_fcntl,
                            [w as u64, libc::F_SETPIPE_SZ as u64, *size as u64, 0, 0, 0],
                            Expect::Any,
                            format!("F_SETPIPE_SZ of the pipe for fd {}", f.fd),
                        ));
                        let (mine, other) = if *write { (w, r) } else { (r, w) };
                        let other = self.park(ops, pid, other, &finals);
                        self.settle(ops, pid, mine, f.fd, cloexec_of(*flags));
                        self.temps.entry(pid).or_default().push(other);
                        let (rfd, wfd) = if *write { (other, f.fd) } else { (f.fd, other) };
                        self.pipes.insert(
                            *inode,
                            PipeAt {
                                pid,
                                read: rfd,
                                write: wfd,
                            },
                        );
                        write_saved(ops, pid, wfd, bytes, "the bytes of the pipe", f.fd)?;
                        set_flags(ops, pid, f.fd, *flags);
                    }
                    FdKind::EventFd { count, flags } => {
                        ops.push(call(
                            pid,
                            libc::SYS_eventfd2,
                            [*count, *flags as u64, 0, 0, 0, 0],
                            Expect::Eq(low as u64),
                            format!("eventfd2 for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                    }
                    FdKind::SignalFd { mask, flags } => {
                        ops.push(call_with(
                            pid,
                            libc::SYS_signalfd4,
                            [u64::MAX, data, 8, *flags as u64, 0, 0],
                            (data, mask.to_ne_bytes().to_vec()),
                            Expect::Eq(low as u64),
                            format!("signalfd4 for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                    }
                    FdKind::TimerFd {
                        clockid,
                        flags,
                        value_ns,
                        interval_ns,
                        ticks,
                    } => {
                        ops.push(call(
                            pid,
                            libc::SYS_timerfd_create,
                            [*clockid as u64, *flags as u64, 0, 0, 0, 0],
                            Expect::Eq(low as u64),
                            format!("timerfd_create for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                        // Unread expirations come back as one that is due at once.
                        let value = if *ticks > 0 { 1 } else { *value_ns };
                        if value > 0 {
                            let mut spec = Vec::with_capacity(32);
                            for ns in [*interval_ns, value] {
                                spec.extend((ns / 1_000_000_000).to_ne_bytes());
                                spec.extend((ns % 1_000_000_000).to_ne_bytes());
                            }
                            ops.push(call_with(
                                pid,
                                libc::SYS_timerfd_settime,
                                [f.fd as u64, 0, data, 0, 0, 0],
                                (data, spec),
                                Expect::Zero,
                                format!("timerfd_settime of fd {}", f.fd),
                            ));
                        }
                    }
                    FdKind::InetSocket {
                        family,
                        sock_type,
                        protocol,
                        flags,
                        addr,
                        listening,
                        reuse_addr,
                        reuse_port,
                        v6only,
                    } => {
                        let sock_flags = *flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
                        ops.push(call(
                            pid,
                            libc::SYS_socket,
                            [
                                *family as u64,
                                (*sock_type | sock_flags) as u64,
                                *protocol as u64,
                                0,
                                0,
                                0,
                            ],
                            Expect::Eq(low as u64),
                            format!("socket for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                        let mut opts = vec![
                            (libc::SOL_SOCKET, libc::SO_REUSEADDR, *reuse_addr),
                            (libc::SOL_SOCKET, libc::SO_REUSEPORT, *reuse_port),
                        ];
                        if *family == libc::AF_INET6 {
                            opts.push((libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, *v6only));
                        }
                        for (level, name, on) in opts {
                            if on || name == libc::IPV6_V6ONLY {
                                ops.push(call_with(
                                    pid,
                                    libc::SYS_setsockopt,
                                    [f.fd as u64, level as u64, name as u64, data, 4, 0],
                                    (data, i32::from(on).to_ne_bytes().to_vec()),
                                    Expect::Zero,
                                    format!("setsockopt {name} of fd {}", f.fd),
                                ));
                            }
                        }
                        if let Some(addr) = addr {
                            let bytes = from_hex(addr).ok_or_else(|| {
                                CrError::Incompatible(format!(
                                    "the address of the socket at fd {} is not hex",
                                    f.fd
                                ))
                            })?;
                            let bytes = rebind_address(&bytes);
                            let len = bytes.len() as u64;
                            ops.push(call_with(
                                pid,
                                libc::SYS_bind,
                                [f.fd as u64, data, len, 0, 0, 0],
                                (data, bytes),
                                Expect::Zero,
                                format!("bind of the socket at fd {}", f.fd),
                            ));
                        }
                        if *listening {
                            ops.push(call(
                                pid,
                                libc::SYS_listen,
                                [f.fd as u64, LISTEN_BACKLOG, 0, 0, 0, 0],
                                Expect::Zero,
                                format!("listen on fd {}", f.fd),
                            ));
                        }
                    }
                    FdKind::ClosedSocket { flags, .. } => {
                        // One end of a socket pair whose other end is closed at once.
                        let sock_flags = *flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
                        let a = low;
                        self.opened(pid, a);
                        let b = self.lowest_open_slot(pid);
                        self.opened(pid, b);
                        ops.push(call_with(
                            pid,
                            libc::SYS_socketpair,
                            [
                                libc::AF_UNIX as u64,
                                (libc::SOCK_STREAM | sock_flags) as u64,
                                0,
                                data,
                                0,
                                0,
                            ],
                            (data, vec![0; 8]),
                            Expect::Zero,
                            format!("socketpair for the closed connection at fd {}", f.fd),
                        ));
                        ops.push(call(
                            pid,
                            libc::SYS_close,
                            [b as u64, 0, 0, 0, 0, 0],
                            Expect::Zero,
                            format!("close of the far end for fd {}", f.fd),
                        ));
                        self.closed(pid, b);
                        self.settle(ops, pid, a, f.fd, cloexec_of(*flags));
                    }
                    FdKind::UnixSocket {
                        sock_type,
                        flags,
                        inode,
                        peer,
                        name,
                        listening,
                        queue,
                    } => {
                        let msgs = queue
                            .iter()
                            .map(|m| from_hex(m))
                            .collect::<Option<Vec<_>>>()
                            .ok_or_else(|| {
                                CrError::Incompatible(format!(
                                    "the queue of the socket at fd {} is not hex",
                                    f.fd
                                ))
                            })?;
                        let stream = *sock_type == libc::SOCK_STREAM;
                        let msgs = if stream { vec![msgs.concat()] } else { msgs };
                        let msgs: Vec<Vec<u8>> = msgs
                            .into_iter()
                            .filter(|m| !(stream && m.is_empty()))
                            .collect();
                        if let Some(at) = self.unix_pairs.remove(inode) {
                            // The other end of a pair made with an earlier socket.
                            self.take_from(ops, pid, at.pid, at.parked, f.fd)?;
                            set_flags(ops, pid, f.fd, *flags);
                            for m in &msgs {
                                self.send(ops, at.pid, at.first, m, None, "queued data");
                            }
                            continue;
                        }
                        if let Some(peer) = peer {
                            let a = low;
                            self.opened(pid, a);
                            let b = self.lowest_open_slot(pid);
                            self.opened(pid, b);
                            ops.push(call_with(
                                pid,
                                libc::SYS_socketpair,
                                [
                                    libc::AF_UNIX as u64,
                                    (*sock_type | libc::SOCK_CLOEXEC) as u64,
                                    0,
                                    data,
                                    0,
                                    0,
                                ],
                                (data, vec![0; 8]),
                                Expect::Zero,
                                format!("socketpair for fd {} (ends {a} and {b})", f.fd),
                            ));
                            for m in &msgs {
                                self.send(ops, pid, b, m, None, "queued data");
                            }
                            let other = self.park(ops, pid, b, &finals);
                            self.settle(ops, pid, a, f.fd, cloexec_of(*flags));
                            set_flags(ops, pid, f.fd, *flags);
                            self.temps.entry(pid).or_default().push(other);
                            self.unix_pairs.insert(
                                *peer,
                                PairAt {
                                    pid,
                                    parked: other,
                                    first: f.fd,
                                },
                            );
                            continue;
                        }
                        let sock_flags = *flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
                        ops.push(call(
                            pid,
                            libc::SYS_socket,
                            [
                                libc::AF_UNIX as u64,
                                (*sock_type | sock_flags) as u64,
                                0,
                                0,
                                0,
                                0,
                            ],
                            Expect::Eq(low as u64),
                            format!("socket for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                        let Some(name) = name else { continue };
                        let name = from_hex(name).ok_or_else(|| {
                            CrError::Incompatible(format!(
                                "the name of the socket at fd {} is not hex",
                                f.fd
                            ))
                        })?;
                        if name.first().is_some_and(|b| *b != 0) {
                            let path = String::from_utf8_lossy(&name).into_owned();
                            self.replace_path(ops, pid, &path)?;
                        }
                        let mut addr = (libc::AF_UNIX as u16).to_ne_bytes().to_vec();
                        addr.extend(&name);
                        if name.first().is_some_and(|b| *b != 0) {
                            addr.push(0);
                        }
                        let alen = addr.len() as u64;
                        ops.push(call_with(
                            pid,
                            libc::SYS_bind,
                            [f.fd as u64, data, alen, 0, 0, 0],
                            (data, addr.clone()),
                            Expect::Zero,
                            format!("bind of the Unix socket at fd {}", f.fd),
                        ));
                        if *listening {
                            ops.push(call(
                                pid,
                                libc::SYS_listen,
                                [f.fd as u64, LISTEN_BACKLOG, 0, 0, 0, 0],
                                Expect::Zero,
                                format!("listen on fd {}", f.fd),
                            ));
                        }
                        if !msgs.is_empty() {
                            // Queued datagrams, sent to its name from a temporary socket.
                            let t = self.lowest_open_slot(pid);
                            ops.push(call(
                                pid,
                                libc::SYS_socket,
                                [
                                    libc::AF_UNIX as u64,
                                    (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as u64,
                                    0,
                                    0,
                                    0,
                                    0,
                                ],
                                Expect::Eq(t as u64),
                                format!("socket to refill the queue of fd {}", f.fd),
                            ));
                            for m in &msgs {
                                self.send(ops, pid, t, m, Some(&addr), "a queued datagram");
                            }
                            ops.push(call(
                                pid,
                                libc::SYS_close,
                                [t as u64, 0, 0, 0, 0, 0],
                                Expect::Zero,
                                format!("close of the temporary socket {t}"),
                            ));
                        }
                    }
                    FdKind::TcpConnection {
                        family,
                        flags,
                        local,
                        remote,
                        send_seq,
                        recv_seq,
                        send_queue,
                        unsent,
                        recv_queue,
                        mss,
                        wscale,
                        sack,
                        timestamps,
                        timestamp,
                        window,
                        nodelay,
                        reuse_addr,
                    } => {
                        let hex = |h: &str| {
                            from_hex(h).ok_or_else(|| {
                                CrError::Incompatible(format!(
                                    "the TCP connection at fd {} is not hex",
                                    f.fd
                                ))
                            })
                        };
                        let (local, remote) = (hex(local)?, hex(remote)?);
                        let (sendq, recvq) = (hex(send_queue)?, hex(recv_queue)?);
                        let sent = sendq.len().saturating_sub(*unsent as usize);
                        let sock_flags = *flags as i32 & (libc::O_NONBLOCK | libc::O_CLOEXEC);
                        ops.push(call(
                            pid,
                            libc::SYS_socket,
                            [
                                *family as u64,
                                (libc::SOCK_STREAM | sock_flags) as u64,
                                libc::IPPROTO_TCP as u64,
                                0,
                                0,
                                0,
                            ],
                            Expect::Eq(low as u64),
                            format!("socket for the TCP connection at fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                        let fd = f.fd;
                        let int = |v: i32| v.to_ne_bytes().to_vec();
                        let tcp = |name| (libc::SOL_TCP, name);
                        self.setsockopt(
                            ops,
                            pid,
                            fd,
                            tcp(libc::TCP_REPAIR),
                            int(1),
                            "TCP_REPAIR on",
                        );
                        for (queue, seq) in [
                            (
                                sockets::TCP_RECV_QUEUE,
                                recv_seq.wrapping_sub(recvq.len() as u32),
                            ),
                            (
                                sockets::TCP_SEND_QUEUE,
                                send_seq.wrapping_sub(sendq.len() as u32),
                            ),
                        ] {
                            self.setsockopt(
                                ops,
                                pid,
                                fd,
                                tcp(libc::TCP_REPAIR_QUEUE),
                                int(queue),
                                "TCP_REPAIR_QUEUE",
                            );
                            self.setsockopt(
                                ops,
                                pid,
                                fd,
                                tcp(sockets::TCP_QUEUE_SEQ),
                                seq.to_ne_bytes().to_vec(),
                                "TCP_QUEUE_SEQ",
                            );
                        }
                        let alen = local.len() as u64;
                        ops.push(call_with(
                            pid,
                            libc::SYS_bind,
                            [fd as u64, data, alen, 0, 0, 0],
                            (data, local),
                            Expect::Zero,
                            format!("bind of the TCP connection at fd {fd}"),
                        ));
                        let rlen = remote.len() as u64;
                        ops.push(call_with(
                            pid,
                            libc::SYS_connect,
                            [fd as u64, data, rlen, 0, 0, 0],
                            (data, remote),
                            Expect::Zero,
                            format!("connect (repair mode) of the TCP connection at fd {fd}"),
                        ));
                        let mut opts = vec![(TCPOPT_MSS, *mss)];
                        if let Some((snd, rcv)) = wscale {
                            opts.push((TCPOPT_WINDOW, *snd as u32 | (*rcv as u32) << 16));
                        }
                        if *sack {
                            opts.push((TCPOPT_SACK_PERM, 0));
                        }
                        if *timestamps {
                            opts.push((TCPOPT_TIMESTAMP, 0));
                        }
                        let opts: Vec<u8> = opts
                            .iter()
                            .flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes()))
                            .collect();
                        self.setsockopt(
                            ops,
                            pid,
                            fd,
                            tcp(libc::TCP_REPAIR_OPTIONS),
                            opts,
                            "TCP_REPAIR_OPTIONS",
                        );
                        if *timestamps {
                            self.setsockopt(
                                ops,
                                pid,
                                fd,
                                tcp(sockets::TCP_TIMESTAMP),
                                timestamp.to_ne_bytes().to_vec(),
                                "TCP_TIMESTAMP",
                            );
                        }
                        if !recvq.is_empty() {
                            self.setsockopt(
                                ops,
                                pid,
                                fd,
                                tcp(libc::TCP_REPAIR_QUEUE),
                                int(sockets::TCP_RECV_QUEUE),
                                "TCP_REPAIR_QUEUE",
                            );
                            self.send(ops, pid, fd, &recvq, None, "the receive queue");
                        }
                        if sent > 0 {
                            self.setsockopt(
                                ops,
                                pid,
                                fd,
                                tcp(libc::TCP_REPAIR_QUEUE),
                                int(sockets::TCP_SEND_QUEUE),
                                "TCP_REPAIR_QUEUE",
                            );
                            self.send(
                                ops,
                                pid,
                                fd,
                                &sendq[..sent],
                                None,
                                "sent, unacknowledged data",
                            );
                        }
                        let win: Vec<u8> = window.iter().flat_map(|w| w.to_ne_bytes()).collect();
                        self.setsockopt(
                            ops,
                            pid,
                            fd,
                            tcp(sockets::TCP_REPAIR_WINDOW),
                            win,
                            "TCP_REPAIR_WINDOW",
                        );
                        let mut fin = Vec::new();
                        self.setsockopt(
                            &mut fin,
                            pid,
                            fd,
                            tcp(libc::TCP_REPAIR),
                            int(0),
                            "TCP_REPAIR off",
                        );
                        if sent < sendq.len() {
                            self.send(&mut fin, pid, fd, &sendq[sent..], None, "unsent data");
                        }
                        if *reuse_addr {
                            // Leaving repair mode cleared it.
                            self.setsockopt(
                                &mut fin,
                                pid,
                                fd,
                                (libc::SOL_SOCKET, libc::SO_REUSEADDR),
                                int(1),
                                "SO_REUSEADDR",
                            );
                        }
                        if *nodelay {
                            self.setsockopt(
                                &mut fin,
                                pid,
                                fd,
                                tcp(libc::TCP_NODELAY),
                                int(1),
                                "TCP_NODELAY",
                            );
                        }
                        self.finish.extend(fin);
                    }
                    FdKind::Fifo {
                        path,
                        flags,
                        inode,
                        data: bytes,
                    } => {
                        let cpath = super::super::restore::cstr(path)?;
                        if self.fifos.insert(*inode) {
                            // A read-write end first: no open of the FIFO blocks, and its
                            // bytes stay until every process has its fds.
                            ops.push(call_with(
                                pid,
                                libc::SYS_openat,
                                [
                                    libc::AT_FDCWD as u64,
                                    data,
                                    (libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) as u64,
                                    0,
                                    0,
                                    0,
                                ],
                                (data, cpath.clone()),
                                Expect::Eq(low as u64),
                                format!("open of the FIFO {path} (read-write, temporary)"),
                            ));
                            self.opened(pid, low);
                            let t = self.park(ops, pid, low, &finals);
                            self.temps.entry(pid).or_default().push(t);
                            write_saved(ops, pid, t, bytes, "the bytes of the FIFO", f.fd)?;
                        }
                        let low = self.lowest_open_slot(pid);
                        let flags = *flags as i32 & OPEN_FLAGS_KEPT;
                        ops.push(call_with(
                            pid,
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, data, flags as u64, 0, 0, 0],
                            (data, cpath),
                            Expect::Eq(low as u64),
                            format!("open of the FIFO {path} for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, flags & libc::O_CLOEXEC != 0);
                    }
                    FdKind::DeletedFile {
                        path,
                        flags,
                        pos,
                        mode,
                        data: bytes,
                    } => {
                        let dir = match path.rsplit_once('/') {
                            Some(("", _)) => "/",
                            Some((d, _)) => d,
                            None => ".",
                        };
                        ops.push(call_with(
                            pid,
                            libc::SYS_openat,
                            [
                                libc::AT_FDCWD as u64,
                                data,
                                (libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC) as u64,
                                *mode as u64,
                                0,
                                0,
                            ],
                            (data, super::super::restore::cstr(dir)?),
                            Expect::Eq(low as u64),
                            format!("open of an unnamed file in {dir} (for the deleted {path})"),
                        ));
                        self.opened(pid, low);
                        let t = self.park(ops, pid, low, &finals);
                        write_saved(ops, pid, t, bytes, "the contents of the deleted file", f.fd)?;
                        // Re-opened with its own flags through /proc.
                        let low = self.lowest_open_slot(pid);
                        let flags = *flags as i32 & OPEN_FLAGS_KEPT & !libc::O_CREAT;
                        let me = format!("/proc/self/fd/{t}");
                        ops.push(call_with(
                            pid,
                            libc::SYS_openat,
                            [libc::AT_FDCWD as u64, data, flags as u64, 0, 0, 0],
                            (data, super::super::restore::cstr(&me)?),
                            Expect::Eq(low as u64),
                            format!("open of the unnamed file for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        ops.push(call(
                            pid,
                            libc::SYS_close,
                            [t as u64, 0, 0, 0, 0, 0],
                            Expect::Zero,
                            format!("close of the temporary fd {t}"),
                        ));
                        self.closed(pid, t);
                        self.settle(ops, pid, low, f.fd, flags & libc::O_CLOEXEC != 0);
                        if *pos != 0 {
                            ops.push(call(
                                pid,
                                libc::SYS_lseek,
                                [f.fd as u64, *pos, libc::SEEK_SET as u64, 0, 0, 0],
                                Expect::Eq(*pos),
                                format!("lseek of fd {} to {pos}", f.fd),
                            ));
                        }
                    }
                    FdKind::Epoll { flags, .. } => {
                        ops.push(call(
                            pid,
                            libc::SYS_epoll_create1,
                            [*flags as u64 & libc::O_CLOEXEC as u64, 0, 0, 0, 0, 0],
                            Expect::Eq(low as u64),
                            format!("epoll_create1 for fd {}", f.fd),
                        ));
                        self.opened(pid, low);
                        self.settle(ops, pid, low, f.fd, cloexec_of(*flags));
                    }
                }
            }
            // Close-on-exec as saved for dups and taken fds; epoll interest lists once
            // every fd exists.
            for f in fds {
                if let FdKind::Epoll { watches, .. } = &f.kind {
                    for (tfd, events, udata) in watches {
                        let mut ev = Vec::with_capacity(12);
                        ev.extend(events.to_ne_bytes());
                        ev.extend(udata.to_ne_bytes());
                        ops.push(call_with(
                            pid,
                            libc::SYS_epoll_ctl,
                            [
                                f.fd as u64,
                                libc::EPOLL_CTL_ADD as u64,
                                *tfd as u64,
                                data,
                                0,
                                0,
                            ],
                            (data, ev),
                            Expect::Zero,
                            format!("epoll_ctl ADD of fd {tfd} to epoll fd {}", f.fd),
                        ));
                    }
                }
            }
            Ok(())
        }

        /// Gives `pid` fd `to`, the same open file as fd `from` of `owner` (`pidfd_open` +
        /// `pidfd_getfd` injected in `pid`, or `dup3` within one process).
        fn take_from(
            &mut self,
            ops: &mut Vec<Op>,
            pid: i32,
            owner: i32,
            from: i32,
            to: i32,
        ) -> Result<()> {
            if owner == pid {
                ops.push(call(
                    pid,
                    libc::SYS_dup3,
                    [from as u64, to as u64, 0, 0, 0, 0],
                    Expect::Eq(to as u64),
                    format!("dup3 of fd {from} to fd {to}"),
                ));
                self.opened(pid, to);
                return Ok(());
            }
            let pidfd = self.lowest_open_slot(pid);
            ops.push(call(
                pid,
                libc::SYS_pidfd_open,
                [owner as u64, 0, 0, 0, 0, 0],
                Expect::Eq(pidfd as u64),
                format!("pidfd_open of process {owner}"),
            ));
            self.opened(pid, pidfd);
            let got = self.lowest_open_slot(pid);
            ops.push(call(
                pid,
                libc::SYS_pidfd_getfd,
                [pidfd as u64, from as u64, 0, 0, 0, 0],
                Expect::Eq(got as u64),
                format!("pidfd_getfd of fd {from} of process {owner}"),
            ));
            self.opened(pid, got);
            ops.push(call(
                pid,
                libc::SYS_close,
                [pidfd as u64, 0, 0, 0, 0, 0],
                Expect::Zero,
                format!("close of the pidfd of process {owner}"),
            ));
            self.closed(pid, pidfd);
            // pidfd_getfd sets close-on-exec; the saved flag is set after.
            self.settle(ops, pid, got, to, false);
            Ok(())
        }

        /// Takes TCP connections out of repair mode and closes every temporary fd; call once
        /// every process has its fds.
        pub fn close_temporaries(&mut self, ops: &mut Vec<Op>) {
            ops.append(&mut self.finish);
            for (pid, fds) in std::mem::take(&mut self.temps) {
                for fd in fds {
                    ops.push(call(
                        pid,
                        libc::SYS_close,
                        [fd as u64, 0, 0, 0, 0, 0],
                        Expect::Zero,
                        format!("close of the temporary fd {fd}"),
                    ));
                }
            }
        }
    }

    /// Writes saved bytes (hex, as in the image; `what` names them in errors) through fd `fd`
    /// of `pid` — nothing when there are none.
    fn write_saved(
        ops: &mut Vec<Op>,
        pid: i32,
        fd: i32,
        hex: &str,
        what: &str,
        saved_fd: i32,
    ) -> Result<()> {
        let data = from_hex(hex)
            .ok_or_else(|| CrError::Incompatible(format!("{what} at fd {saved_fd} are not hex")))?;
        if !data.is_empty() {
            ops.push(Op::WriteFd { pid, fd, data });
        }
        Ok(())
    }

    /// Sets the saved close-on-exec and non-blocking flags of a pipe end.
    fn set_flags(ops: &mut Vec<Op>, pid: i32, fd: i32, flags: u32) {
        let cloexec = flags as i32 & libc::O_CLOEXEC != 0;
        ops.push(call(
            pid,
            libc::SYS_fcntl,
            [
                fd as u64,
                libc::F_SETFD as u64,
                if cloexec { libc::FD_CLOEXEC as u64 } else { 0 },
                0,
                0,
                0,
            ],
            Expect::Zero,
            format!("F_SETFD of fd {fd}"),
        ));
        ops.push(call(
            pid,
            libc::SYS_fcntl,
            [
                fd as u64,
                libc::F_SETFL as u64,
                (flags as i32 & libc::O_NONBLOCK) as u64,
                0,
                0,
                0,
            ],
            Expect::Zero,
            format!("F_SETFL of fd {fd}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut a = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        a.extend(port.to_be_bytes());
        a.extend(ip);
        a.extend([0u8; 8]);
        a
    }

    #[test]
    fn addresses_of_the_old_network_become_unspecified_and_ports_stay() {
        assert_eq!(rebind_address(&v4([10, 89, 0, 5], 80)), v4([0; 4], 80));
        assert_eq!(
            rebind_address(&v4([127, 0, 0, 1], 80)),
            v4([127, 0, 0, 1], 80)
        );
        assert_eq!(rebind_address(&v4([0; 4], 8080)), v4([0; 4], 8080));
        let mut v6 = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
        v6.extend(443u16.to_be_bytes());
        v6.extend([0u8; 4]);
        let mut ip = [0u8; 16];
        ip[15] = 1;
        let mut lo = v6.clone();
        lo.extend(ip);
        lo.extend([0u8; 4]);
        assert_eq!(rebind_address(&lo), lo, "::1 stays");
        let mut other = v6.clone();
        other.extend([0xfd; 16]);
        other.extend([0u8; 4]);
        let got = rebind_address(&other);
        assert!(got[8..24].iter().all(|b| *b == 0));
        assert_eq!(got[2..4], 443u16.to_be_bytes());
    }

    #[test]
    fn pipe_links_name_their_inode() {
        assert_eq!(pipe_inode("pipe:[4242]"), Some(4242));
        assert_eq!(pipe_inode("socket:[4242]"), None);
        assert_eq!(pipe_inode("/tmp/pipe:[1]"), None);
    }
}

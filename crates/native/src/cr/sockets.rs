//! Socket helpers of the checkpoint: Unix socket states and peers through `sock_diag`
//! (`NETLINK_SOCK_DIAG`, `UNIX_DIAG` with `UDIAG_SHOW_PEER`), queued messages peeked without
//! consuming them (`SO_PEEK_OFF` + `MSG_PEEK`), TCP connections read in repair mode
//! (`TCP_REPAIR`: sequence numbers, both queues, window, options, timestamp) and the peers
//! of TCP connections from `/proc/PID/net/tcp{,6}`.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The `TCP_ESTABLISHED` state (also a connected Unix socket's).
pub const ESTABLISHED: u8 = 1;
/// The `TCP_LISTEN` state (also a listening Unix socket's).
pub const LISTEN: u8 = 10;
/// `TCP_QUEUE_SEQ`.
pub const TCP_QUEUE_SEQ: i32 = 21;
/// `TCP_TIMESTAMP`.
pub const TCP_TIMESTAMP: i32 = 24;
/// `TCP_REPAIR_WINDOW`.
pub const TCP_REPAIR_WINDOW: i32 = 29;
/// `TCP_RECV_QUEUE` (a `TCP_REPAIR_QUEUE` value).
pub const TCP_RECV_QUEUE: i32 = 1;
/// `TCP_SEND_QUEUE` (a `TCP_REPAIR_QUEUE` value).
pub const TCP_SEND_QUEUE: i32 = 2;
/// `TCP_REPAIR_OFF_NO_WP`: leave repair mode without a window probe.
const TCP_REPAIR_OFF_NO_WP: i32 = -1;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;

/// What `sock_diag` says of one Unix socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixDiag {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub sock_type: i32,
    /// `TCP_LISTEN` (10), `TCP_ESTABLISHED` (1) or `TCP_CLOSE` (7).
    pub state: u8,
    /// Its name (`sun_path` bytes; abstract names start with a zero byte), if bound.
    pub name: Option<Vec<u8>>,
    /// The inode of the socket file its name is bound to (path names).
    pub vfs_ino: Option<u32>,
    /// The inode of the socket it is connected to.
    pub peer: Option<u64>,
    /// Connections waiting to be accepted (listening sockets): their inodes.
    pub icons: Vec<u64>,
}

/// Every Unix socket of the network namespace of process `pid`, by inode.
pub fn unix_diag(pid: i32) -> io::Result<BTreeMap<u64, UnixDiag>> {
    let nl = netlink_in_netns_of(pid)?;
    let mut req = Vec::with_capacity(40);
    req.extend(40u32.to_ne_bytes());
    req.extend(SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend(((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend(1u32.to_ne_bytes());
    req.extend(0u32.to_ne_bytes());
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend(0u16.to_ne_bytes());
    req.extend(u32::MAX.to_ne_bytes());
    req.extend(0u32.to_ne_bytes());
    req.extend(
        (UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN)
            .to_ne_bytes(),
    );
    req.extend([0u8; 8]);
    // SAFETY: `req` is a live buffer of its length.
    if unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: `buf` is a live buffer of its length that the kernel writes.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32_at(msgs, 0) as usize;
            let ty = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < 16 || len > msgs.len() {
                return Err(io::Error::other("a truncated sock_diag message"));
            }
            match ty as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => {
                    let e = i32::from_ne_bytes(msgs[16..20].try_into().unwrap_or([0; 4]));
                    return Err(io::Error::from_raw_os_error(-e));
                }
                _ => {}
            }
            let body = &msgs[16..len];
            if body.len() >= 16 {
                let (ino, d) = parse_unix_msg(body);
                out.insert(ino, d);
            }
            msgs = &msgs[(len + 3) & !3..];
            if msgs.len() < 16 {
                break;
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// One `unix_diag_msg` and its attributes.
fn parse_unix_msg(body: &[u8]) -> (u64, UnixDiag) {
    let mut d = UnixDiag {
        sock_type: body[1] as i32,
        state: body[2],
        ..Default::default()
    };
    let ino = u32_at(body, 4) as u64;
    let mut attrs = &body[16..];
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let aty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if alen < 4 || alen > attrs.len() {
            break;
        }
        let v = &attrs[4..alen];
        match aty {
            0 => d.name = Some(v.to_vec()),
            1 if v.len() >= 4 => d.vfs_ino = Some(u32_at(v, 0)),
            2 if v.len() >= 4 => d.peer = Some(u32_at(v, 0) as u64).filter(|p| *p != 0),
            3 => d.icons = v.chunks_exact(4).map(|c| u32_at(c, 0) as u64).collect(),
            _ => {}
        }
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    (ino, d)
}

/// A `NETLINK_SOCK_DIAG` socket in the network namespace of `pid` (made on a short-lived
/// thread that joins that namespace when it is not ours).
fn netlink_in_netns_of(pid: i32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net"))?.ino();
    let ours = std::fs::metadata("/proc/self/ns/net")?.ino();
    let make = || -> io::Result<OwnedFd> {
        // SAFETY: socket takes integers only.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket just returned this fd, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    if theirs == ours {
        return make();
    }
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on this (throw-away) thread with a live namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        make()
    })
    .join()
    .map_err(|_| io::Error::other("the sock_diag thread panicked"))?
}

/// Why a queue could not be peeked.
#[derive(Debug)]
pub enum PeekError {
    /// A message carries file descriptors (`SCM_RIGHTS`).
    Rights,
    /// A system call failed.
    Io(io::Error),
}

/// The messages (or, for a stream socket, chunks) in the receive queue of a Unix socket,
/// in order, read with `MSG_PEEK` from a peek offset (`SO_PEEK_OFF`, put back after).
/// (An empty datagram is seen by the first peek only: the kernel skips it once peeked.)
pub fn peek_unix_queue(sock: &OwnedFd) -> Result<Vec<Vec<u8>>, PeekError> {
    let fd = sock.as_raw_fd();
    let old = super::sys::sockopt_int(sock, libc::SOL_SOCKET, libc::SO_PEEK_OFF)
        .map_err(PeekError::Io)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).map_err(PeekError::Io)?;
    let r = peek_all(fd);
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old);
    r
}

fn peek_all(fd: i32) -> Result<Vec<Vec<u8>>, PeekError> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut cbuf = [0u64; 64];
    loop {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is valid.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&cbuf);
        // SAFETY: `msg` points at live buffers (`buf`, `cbuf`) of the lengths given.
        let n = unsafe {
            libc::recvmsg(
                fd,
                &mut msg,
                libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(out);
            }
            return Err(PeekError::Io(e));
        }
        let mut rights = msg.msg_flags & libc::MSG_CTRUNC != 0;
        // SAFETY: CMSG_FIRSTHDR/NXTHDR walk the control buffer the kernel filled, bounded
        // by msg_controllen; an SCM_RIGHTS payload is an array of fds now ours, closed here.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    rights = true;
                    let data = libc::CMSG_DATA(c).cast::<i32>();
                    let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                    for i in 0..len / 4 {
                        libc::close(data.add(i).read_unaligned());
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if rights {
            return Err(PeekError::Rights);
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(PeekError::Io(io::Error::other(
                "a queued message is larger than 1 MiB",
            )));
        }
        if n == 0 {
            // A stream at its end, or an empty datagram (kept: it is a message).
            let ty = super::sys::sockopt_int(&borrowed(fd), libc::SOL_SOCKET, libc::SO_TYPE)
                .map_err(PeekError::Io)?;
            if ty == libc::SOCK_STREAM {
                return Ok(out);
            }
        }
        out.push(buf[..n as usize].to_vec());
        if out.len() > 1 << 16 {
            return Err(PeekError::Io(io::Error::other(
                "the peek offset does not advance",
            )));
        }
    }
}

/// An `OwnedFd`-shaped view of a borrowed fd that is never closed.
fn borrowed(fd: i32) -> std::mem::ManuallyDrop<OwnedFd> {
    // SAFETY: wrapped in ManuallyDrop, so the fd (owned by the caller) is never closed here.
    std::mem::ManuallyDrop::new(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int(fd: i32, level: i32, name: i32, v: i32) -> io::Result<()> {
    // SAFETY: `v` is a live int of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&raw const v).cast(),
            size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn get_bytes(fd: i32, level: i32, name: i32, len: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; len];
    let mut l = len as libc::socklen_t;
    // SAFETY: `v` is a live buffer of `l` bytes the kernel writes.
    let r = unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut l) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(l as usize);
    Ok(v)
}

fn ioctl_int(fd: i32, req: libc::c_ulong) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: these ioctls write one int into the live `v`.
    if unsafe { libc::ioctl(fd, req, &mut v) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// What repair mode reads of an established TCP connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcpRepairState {
    /// The next sequence number to send (`write_seq`).
    pub send_seq: u32,
    /// The next sequence number expected (`rcv_nxt`).
    pub recv_seq: u32,
    /// The send queue: sent but unacknowledged bytes, then unsent ones.
    pub send_queue: Vec<u8>,
    /// How many bytes at the end of the send queue were never sent.
    pub unsent: u32,
    /// The receive queue (bytes not read by the process).
    pub recv_queue: Vec<u8>,
    /// The MSS clamp.
    pub mss: u32,
    /// Send and receive window scale, if negotiated.
    pub wscale: Option<(u8, u8)>,
    /// SACK negotiated.
    pub sack: bool,
    /// Timestamps negotiated.
    pub timestamps: bool,
    /// The timestamp clock (`TCP_TIMESTAMP`).
    pub timestamp: u32,
    /// `TCP_REPAIR_WINDOW`: snd_wl1, snd_wnd, max_window, rcv_wnd, rcv_wup.
    pub window: [u32; 5],
    /// `TCP_NODELAY`.
    pub nodelay: bool,
    /// `SO_REUSEADDR`.
    pub reuse_addr: bool,
}

/// The state of TCP connection `sock` (established), read in repair mode, which it leaves
/// again (without a window probe); `SO_REUSEADDR` is put back as it was. `None` when the
/// connection is not established.
pub fn tcp_repair_dump(sock: &OwnedFd) -> io::Result<Option<TcpRepairState>> {
    let fd = sock.as_raw_fd();
    let info = get_bytes(fd, libc::SOL_TCP, libc::TCP_INFO, 8)?;
    if info.first() != Some(&ESTABLISHED) {
        return Ok(None);
    }
    let reuse = super::sys::sockopt_int(sock, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR, 1)?;
    let r = tcp_read_repaired(sock, &info);
    let off = set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR, TCP_REPAIR_OFF_NO_WP);
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    let mut st = r?;
    off?;
    st.reuse_addr = reuse != 0;
    Ok(Some(st))
}

fn tcp_read_repaired(sock: &OwnedFd, info: &[u8]) -> io::Result<TcpRepairState> {
    let fd = sock.as_raw_fd();
    let int = |level, name| super::sys::sockopt_int(sock, level, name);
    let mut st = TcpRepairState::default();
    let inq = ioctl_int(fd, libc::FIONREAD)? as usize;
    let outq = ioctl_int(fd, libc::TIOCOUTQ)? as usize;
    st.unsent = ioctl_int(fd, SIOCOUTQNSD)? as u32;
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE)?;
    st.recv_seq = int(libc::SOL_TCP, TCP_QUEUE_SEQ)? as u32;
    st.recv_queue = peek_stream(fd, inq)?;
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)?;
    st.send_seq = int(libc::SOL_TCP, TCP_QUEUE_SEQ)? as u32;
    st.send_queue = peek_stream(fd, outq)?;
    set_int(fd, libc::SOL_TCP, libc::TCP_REPAIR_QUEUE, 0)?;
    st.mss = int(libc::SOL_TCP, libc::TCP_MAXSEG)? as u32;
    st.timestamp = int(libc::SOL_TCP, TCP_TIMESTAMP)? as u32;
    let opts = info[5];
    st.timestamps = opts & 1 != 0;
    st.sack = opts & 2 != 0;
    if opts & 4 != 0 {
        st.wscale = Some((info[6] & 0xf, info[6] >> 4));
    }
    let w = get_bytes(fd, libc::SOL_TCP, TCP_REPAIR_WINDOW, 20)?;
    if w.len() != 20 {
        return Err(io::Error::other("a short TCP_REPAIR_WINDOW"));
    }
    for (i, c) in w.chunks_exact(4).enumerate() {
        st.window[i] = u32_at(c, 0);
    }
    st.nodelay = int(libc::SOL_TCP, libc::TCP_NODELAY)? != 0;
    Ok(st)
}

/// Peeks `len` bytes of the selected repair queue.
fn peek_stream(fd: i32, len: usize) -> io::Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` is a live buffer of `len` bytes the kernel writes.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            len,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != len {
        return Err(io::Error::other(format!(
            "peeked {n} of the {len} queued bytes"
        )));
    }
    Ok(buf)
}

/// The inode of the other end of the TCP connection with inode `inode`, from
/// `/proc/PID/net/tcp` and `tcp6` (the namespace of process `pid`); `None` when the other
/// end has no socket file (not accepted yet) or is not on this host.
pub fn tcp_peer_inode(pid: i32, inode: u64) -> Option<u64> {
    let mut rows = Vec::new();
    for f in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let w: Vec<&str> = line.split_whitespace().collect();
            if w.len() > 9 {
                rows.push((
                    w[1].to_string(),
                    w[2].to_string(),
                    w[9].parse::<u64>().ok()?,
                ));
            }
        }
    }
    let (local, remote, _) = rows.iter().find(|r| r.2 == inode)?;
    rows.iter()
        .find(|r| r.0 == *remote && r.1 == *local && r.2 != 0)
        .map(|r| r.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ty: i32) -> (OwnedFd, OwnedFd) {
        let mut sv = [0i32; 2];
        // SAFETY: `sv` is a live [i32; 2] the kernel writes.
        let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, sv.as_mut_ptr()) };
        assert_eq!(r, 0);
        // SAFETY: socketpair just returned these fds, owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
    }

    fn send(fd: &OwnedFd, b: &[u8]) {
        // SAFETY: `b` is a live buffer of its length.
        let n = unsafe { libc::send(fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        assert_eq!(n, b.len() as isize);
    }

    #[test]
    fn queued_datagrams_are_peeked_one_by_one_and_stay() {
        let (a, b) = pair(libc::SOCK_DGRAM);
        send(&b, b"one");
        send(&b, b"two");
        send(&b, b"three");
        let q = peek_unix_queue(&a).unwrap();
        assert_eq!(q, vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]);
        assert_eq!(peek_unix_queue(&a).unwrap().len(), 3, "nothing consumed");
        assert_eq!(
            super::super::sys::sockopt_int(&a, libc::SOL_SOCKET, libc::SO_PEEK_OFF).unwrap(),
            -1,
            "the peek offset is put back"
        );
    }

    #[test]
    fn a_stream_queue_is_peeked_whole_and_fds_in_flight_are_refused() {
        let (a, b) = pair(libc::SOCK_STREAM);
        send(&b, b"hello ");
        send(&b, b"world");
        let q: Vec<u8> = peek_unix_queue(&a).unwrap().concat();
        assert_eq!(q, b"hello world");
        // An fd in flight.
        let (c, d) = pair(libc::SOCK_SEQPACKET);
        let fd = a.as_raw_fd();
        let mut cbuf = [0u64; 4];
        let mut iov = libc::iovec {
            iov_base: b"x".as_ptr() as *mut _,
            iov_len: 1,
        };
        // SAFETY: msghdr is plain old data; the control buffer is live and large enough for
        // one SCM_RIGHTS header with one int.
        unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_SOCKET;
            (*cm).cmsg_type = libc::SCM_RIGHTS;
            (*cm).cmsg_len = libc::CMSG_LEN(4) as usize;
            libc::CMSG_DATA(cm).cast::<i32>().write_unaligned(fd);
            assert_eq!(libc::sendmsg(d.as_raw_fd(), &msg, 0), 1);
        }
        assert!(matches!(peek_unix_queue(&c), Err(PeekError::Rights)));
    }

    #[test]
    fn unix_diag_finds_both_ends_of_a_pair() {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = pair(libc::SOCK_STREAM);
        let ino = |f: &OwnedFd| {
            std::fs::metadata(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .unwrap()
                .ino()
        };
        let all = unix_diag(std::process::id() as i32).unwrap();
        let da = &all[&ino(&a)];
        assert_eq!(da.peer, Some(ino(&b)));
        assert_eq!(da.sock_type, libc::SOCK_STREAM);
        assert_eq!(da.state, ESTABLISHED);
        assert_eq!(all[&ino(&b)].peer, Some(ino(&a)));
    }
}

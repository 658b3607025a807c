//! Passing file descriptors over a unix socket (`SCM_RIGHTS`), for the exec
//! helper: the child hands it the pty master it opened inside the container,
//! and the helper hands the agent the command's pidfd and stdio ends. nix
//! does the messaging; what needs `unsafe` is taking ownership of received fds.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// Sends the one byte `tag` with `fds` attached on the connected unix socket `sock`.
pub fn send_fds(sock: BorrowedFd<'_>, tag: u8, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let data = [tag];
    let iov = [IoSlice::new(&data)];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    loop {
        match sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(1) => return Ok(()),
            Ok(_) => return Err(io::Error::other("sendmsg: short write")),
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Most descriptors [`recv_fds`] takes in one message.
pub const MAX_FDS: usize = 8;

/// Receives one byte and up to `max_fds` (at most [`MAX_FDS`]) descriptors (close-on-exec) from
/// `sock`. `Ok(None)` at end-of-file. Descriptors beyond `max_fds` are
/// closed by the kernel (`MSG_CTRUNC`), which is reported as an error.
pub fn recv_fds(sock: BorrowedFd<'_>, max_fds: usize) -> io::Result<Option<(u8, Vec<OwnedFd>)>> {
    let mut data = [0u8; 1];
    // Room for MAX_FDS; more than `max_fds` (or a truncated message) is an error.
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    loop {
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => msg,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    // SAFETY: the kernel just installed `fd` in our table for
                    // this message; nothing else refers to it, so we own it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) || fds.len() > max_fds {
            return Err(io::Error::other("received more descriptors than expected"));
        }
        if msg.bytes == 0 {
            return Ok(None);
        }
        return Ok(Some((data[0], fds)));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_arrive_with_their_tag_and_work() {
        let (a, b) = UnixStream::pair().unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut r = std::fs::File::from(r);
        send_fds(a.as_fd(), b'S', &[w.as_fd()]).unwrap();
        drop(w);
        let (tag, fds) = recv_fds(b.as_fd(), 4).unwrap().unwrap();
        assert_eq!((tag, fds.len()), (b'S', 1));
        let mut w = std::fs::File::from(fds.into_iter().next().unwrap());
        w.write_all(b"through").unwrap();
        drop(w);
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
        drop(a);
        assert!(recv_fds(b.as_fd(), 4).unwrap().is_none());
    }

    #[test]
    fn a_plain_byte_has_no_descriptors() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"{").unwrap();
        let (tag, fds) = recv_fds(b.as_fd(), 4).unwrap().unwrap();
        assert_eq!((tag, fds.len()), (b'{', 0));
    }
}

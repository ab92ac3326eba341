//! Reading a connection's socket in a worker: every read into one buffer the worker's thread shares (after room for
//! the scanner's carry), with the kernel's receive timestamp of its last segment (SO_TIMESTAMPNS).
//!
//! What a read is scanned for is the caller's: the plain path scans the bytes for item markers, the compressing
//! path splits them at frame boundaries first (see `worker.rs`).

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::scan::CARRY;

/// Size of the shared read buffer.
const READ_BUFFER: usize = 256 * 1024;

thread_local! {
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; CARRY + READ_BUFFER]);
    /// Room for the receive timestamp's control message.
    static CONTROL: RefCell<Vec<u8>> = RefCell::new(nix::cmsg_space!(nix::sys::time::TimeSpec));
}

/// Reads what the socket holds, adding the bytes read to `wire_bytes`; each read is handed to `each` as the shared
/// buffer (the read's bytes at `CARRY..CARRY + n`, the carry's room before them), `n`, and when the bytes arrived.
/// `None` while the connection stays open; once it has ended, `Some(Ok(()))` when the server closed it,
/// `Some(Err(kind))` when a read failed.
pub(crate) fn read_each(
    stream: &TcpStream,
    wire_bytes: &mut u64,
    mut each: impl FnMut(&mut [u8], usize, Option<u64>),
) -> Option<Result<(), io::ErrorKind>> {
    READ_BUF.with_borrow_mut(|buf| {
        CONTROL.with_borrow_mut(|control| {
            loop {
                let (n, arrived) =
                    match stream.try_io(Interest::READABLE, || receive(stream, &mut buf[CARRY..], control)) {
                        Ok((0, _)) => return Some(Ok(())),
                        Ok(read) => read,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                        Err(e) => return Some(Err(e.kind())),
                    };
                *wire_bytes += n as u64;
                each(buf, n, arrived);
            }
        })
    })
}

/// One `recvmsg` into `buf`: the bytes read, and when the last of them reached the socket (µs since the epoch), if
/// the kernel said.
fn receive(stream: &TcpStream, buf: &mut [u8], control: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = [IoSliceMut::new(buf)];
    let message = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(control), MsgFlags::empty())?;
    let arrived = message.cmsgs().ok().and_then(|mut cmsgs| {
        cmsgs.find_map(|cmsg| match cmsg {
            ControlMessageOwned::ScmTimestampns(at) => {
                Some(at.tv_sec() as u64 * 1_000_000 + at.tv_nsec() as u64 / 1_000)
            }
            _ => None,
        })
    });
    Ok((message.bytes, arrived))
}

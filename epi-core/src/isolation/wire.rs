//! The isolation protocol's frames, on a unix stream socket between a host and its plugin-host
//! child.
//!
//! A request is `u32 length` (little-endian, of what follows), one kind byte, then the kind's
//! payload; a reply is `u32 length`, `u32 status` (the ABI's `STATUS_*`), then the payload:
//! the output on `STATUS_OK`, the error text otherwise. One request is in flight per
//! connection; a host opens as many connections as it has concurrent calls.

use std::io::{Read, Write};

/// The largest frame either side accepts (a bigger length means a broken peer).
pub(crate) const MAX_FRAME: usize = 256 << 20;

/// `HELLO`: answers the plugin's description ([`super::child::Hello`] as JSON).
pub(crate) const HELLO: u8 = 0;
/// `CALL provider:u32 function:u32 encoding:u32 input…`: runs one provider function.
pub(crate) const CALL: u8 = 1;
/// `NOTIFY json…`: delivers a notification.
pub(crate) const NOTIFY: u8 = 2;
/// `EXPORT`: answers the plugin's exported state (JSON of `Option<PluginState>`).
pub(crate) const EXPORT: u8 = 3;
/// `IMPORT json…`: hands the plugin its predecessor's state.
pub(crate) const IMPORT: u8 = 4;
/// `CALLBACK index:u32`: reads data provider `index`'s callback.
pub(crate) const CALLBACK: u8 = 5;

/// Spins up to `limit` until `stream` has bytes to read (or an error or its end), then
/// returns; a blocking read follows. A wake-up across cores costs tens of microseconds on a
/// virtual machine (a round trip on a socket pair measured 100 µs across cores, 9 µs on one),
/// so a peer that answers within `limit` is read without sleeping.
pub(crate) fn spin_until_readable(
    stream: &std::os::unix::net::UnixStream,
    limit: std::time::Duration,
) {
    use std::os::fd::AsRawFd;
    let started = std::time::Instant::now();
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte peek into a live local on an open socket; nothing is consumed.
        let peeked = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                &mut byte as *mut u8 as *mut libc::c_void,
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if peeked >= 0 {
            return;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::WouldBlock || started.elapsed() >= limit {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Writes one request.
pub(crate) fn write_request(
    stream: &mut impl Write,
    kind: u8,
    header: &[u32],
    body: &[u8],
) -> std::io::Result<()> {
    let length = 1 + 4 * header.len() + body.len();
    let mut frame = Vec::with_capacity(4 + length);
    frame.extend_from_slice(&frame_length(length)?.to_le_bytes());
    frame.push(kind);
    for word in header {
        frame.extend_from_slice(&word.to_le_bytes());
    }
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

/// Writes one reply.
pub(crate) fn write_reply(
    stream: &mut impl Write,
    status: u32,
    body: &[u8],
) -> std::io::Result<()> {
    let length = 4 + body.len();
    let mut frame = Vec::with_capacity(4 + length);
    frame.extend_from_slice(&frame_length(length)?.to_le_bytes());
    frame.extend_from_slice(&status.to_le_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame)
}

fn frame_length(length: usize) -> std::io::Result<u32> {
    if length > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    Ok(length as u32)
}

/// Reads one frame's bytes (after its length); `None` at a clean end of stream.
pub(crate) fn read_frame(stream: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match stream.read_exact(&mut length) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let length = u32::from_le_bytes(length) as usize;
    if length > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the peer sent a frame of {length} bytes"),
        ));
    }
    let mut frame = vec![0; length];
    stream.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Reads one reply: its status and payload. The end of the stream is an error here.
pub(crate) fn read_reply(stream: &mut impl Read) -> std::io::Result<(u32, Vec<u8>)> {
    let frame = read_frame(stream)?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the plugin host closed the connection",
        )
    })?;
    let status = take_u32(&frame, 0).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "a reply without a status")
    })?;
    Ok((status, frame[4..].to_vec()))
}

/// The little-endian `u32` at `offset`, if the frame is long enough.
pub(crate) fn take_u32(frame: &[u8], offset: usize) -> Option<u32> {
    let bytes = frame.get(offset..offset + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_and_a_reply_read_back() {
        let mut buffer = Vec::new();
        write_request(&mut buffer, CALL, &[1, 2, 3], b"input").unwrap();
        let frame = read_frame(&mut buffer.as_slice()).unwrap().unwrap();
        assert_eq!(frame[0], CALL);
        assert_eq!(take_u32(&frame, 1), Some(1));
        assert_eq!(take_u32(&frame, 9), Some(3));
        assert_eq!(&frame[13..], b"input");

        let mut buffer = Vec::new();
        write_reply(&mut buffer, 7, b"out").unwrap();
        assert_eq!(
            read_reply(&mut buffer.as_slice()).unwrap(),
            (7, b"out".to_vec())
        );
        assert!(read_frame(&mut [].as_slice()).unwrap().is_none());
        assert!(read_reply(&mut [].as_slice()).is_err());
    }

    #[test]
    fn an_oversized_length_is_refused() {
        let bytes = u32::MAX.to_le_bytes();
        assert!(read_frame(&mut bytes.as_slice()).is_err());
    }
}

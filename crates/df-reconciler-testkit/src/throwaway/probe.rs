//! Ports, deadlines, the server log, and a readiness probe that speaks just enough of
//! the PostgreSQL protocol to tell "accepting sessions" from "starting up".

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use super::{io_context, ThrowawayError, LOG_TAIL_BYTES, PROBE_TIMEOUT, SUPERUSER};

/// A port that was free a moment ago. The listener is dropped before postgres binds, so
/// another process can take it in between; `launch` retries on a failed bind.
pub(super) fn free_port() -> Result<u16, ThrowawayError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(io_context("cannot find a free port on 127.0.0.1"))
}

pub(super) fn wait_with_deadline(
    child: &mut Child,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The end of the log from `offset` on, at most `LOG_TAIL_BYTES`, starting at a line.
pub(super) fn read_log_tail(path: &Path, offset: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        let start = offset.max(len.saturating_sub(LOG_TAIL_BYTES));
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if start > offset {
            if let Some(newline) = text.find('\n') {
                text.drain(..=newline);
            }
        }
        Ok(text)
    };
    read().unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// Whether a session starts: sends a protocol 3.0 startup packet (user and database
/// `postgres`, trust authentication) and reads until ReadyForQuery. Unlike a bare TCP
/// connect, this sees "the database system is starting up" and crash recovery.
pub(super) fn probe_session(port: u16) -> Result<(), String> {
    let mut stream = start_session(port, "postgres", PROBE_TIMEOUT)?;
    terminate(&mut stream);
    Ok(())
}

/// The rows of a simple query (`sql` may hold several statements; the rows of all of
/// them, in order), each column as text or NULL. Runs as the superuser on `database`
/// over a session of its own, with `timeout` per read. An ErrorResponse becomes `Err`
/// with the server's severity, message and SQLSTATE.
pub(crate) fn simple_query(
    port: u16,
    database: &str,
    sql: &str,
    timeout: Duration,
) -> Result<Vec<Vec<Option<String>>>, String> {
    let mut stream = start_session(port, database, timeout)?;
    let mut query = vec![b'Q'];
    let len = u32::try_from(4 + sql.len() + 1).map_err(|_| "query too long".to_owned())?;
    query.extend_from_slice(&len.to_be_bytes());
    query.extend_from_slice(sql.as_bytes());
    query.push(0);
    stream
        .write_all(&query)
        .map_err(|e| format!("send query: {e}"))?;
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let (tag, body) = read_message(&mut stream)?;
        match tag {
            b'D' => rows.push(parse_data_row(&body)?),
            b'E' => error = Some(describe_error_response(&body)),
            b'Z' => break,
            // RowDescription, CommandComplete, EmptyQueryResponse, NoticeResponse...
            _ => {}
        }
    }
    terminate(&mut stream);
    match error {
        Some(why) => Err(why),
        None => Ok(rows),
    }
}

/// Connects, sends the startup packet and reads until the first ReadyForQuery.
fn start_session(port: u16, database: &str, timeout: Duration) -> Result<TcpStream, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream =
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.write_all(&startup_packet(SUPERUSER, database)))
        .map_err(|e| format!("send startup packet: {e}"))?;
    loop {
        let (tag, body) = read_message(&mut stream)?;
        match tag {
            b'Z' => return Ok(stream),
            b'E' => return Err(describe_error_response(&body)),
            b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(
                    "the server asks for a password; trust authentication expected".to_owned(),
                )
            }
            // AuthenticationOk, ParameterStatus, BackendKeyData, NoticeResponse.
            _ => {}
        }
    }
}

/// Terminate, so the server does not log an unexpected EOF.
fn terminate(stream: &mut TcpStream) {
    let _ = stream.write_all(&[b'X', 0, 0, 0, 4]);
}

/// One backend message: its type byte and body.
fn read_message(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    /// Far above anything a test query returns; guards against reading garbage.
    const MAX_BODY: usize = 64 * 1024 * 1024;
    let mut header = [0u8; 5];
    stream
        .read_exact(&mut header)
        .map_err(|e| format!("read: {e}"))?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let body_len = len
        .checked_sub(4)
        .filter(|n| *n <= MAX_BODY)
        .ok_or_else(|| format!("malformed message length {len}"))?;
    let mut body = vec![0; body_len];
    stream
        .read_exact(&mut body)
        .map_err(|e| format!("read: {e}"))?;
    Ok((header[0], body))
}

/// DataRow: a column count, then each column's length (-1: NULL) and bytes.
fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, String> {
    let malformed = || "malformed DataRow".to_owned();
    let count: [u8; 2] = body
        .get(..2)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    let count = u16::from_be_bytes(count);
    let mut at = 2;
    let mut columns = Vec::with_capacity(count.into());
    for _ in 0..count {
        let len: [u8; 4] = body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(malformed)?;
        at += 4;
        // -1 (any negative length) is NULL.
        let Ok(len) = usize::try_from(i32::from_be_bytes(len)) else {
            columns.push(None);
            continue;
        };
        let end = at + len;
        let value = body.get(at..end).ok_or_else(malformed)?;
        columns.push(Some(String::from_utf8_lossy(value).into_owned()));
        at = end;
    }
    Ok(columns)
}

pub(super) fn startup_packet(user: &str, database: &str) -> Vec<u8> {
    const PROTOCOL_3_0: u32 = 3 << 16;
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap_or(u32::MAX);
    let mut packet = len.to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// ErrorResponse fields are (type byte, NUL-terminated text); S is the severity, C the
/// SQLSTATE, M the message.
pub(super) fn describe_error_response(body: &[u8]) -> String {
    let (mut severity, mut code, mut message) = (String::new(), String::new(), String::new());
    for field in body.split(|byte| *byte == 0) {
        if let Some((kind, text)) = field.split_first() {
            let text = String::from_utf8_lossy(text).into_owned();
            match kind {
                b'S' => severity = text,
                b'C' => code = text,
                b'M' => message = text,
                _ => {}
            }
        }
    }
    format!("{severity}: {message} (SQLSTATE {code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one connection of a fake server that answers the startup packet with
    /// `reply`, and returns what the probe made of it.
    fn probe_against(reply: Vec<u8>) -> Result<(), String> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut len = [0u8; 4];
            stream.read_exact(&mut len).unwrap();
            let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
            stream.read_exact(&mut startup).unwrap();
            assert_eq!(&startup[..4], &(3u32 << 16).to_be_bytes());
            stream.write_all(&reply).unwrap();
        });
        let result = probe_session(port);
        server.join().unwrap();
        result
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn probe_accepts_ready_for_query() {
        let mut reply = message(b'R', &[0, 0, 0, 0]);
        reply.extend(message(b'S', b"server_version\x0015.0\x00"));
        reply.extend(message(b'K', &[0; 8]));
        reply.extend(message(b'Z', b"I"));
        assert_eq!(probe_against(reply), Ok(()));
    }

    #[test]
    fn simple_query_returns_rows_with_nulls_and_reports_errors() {
        /// A fake server: trust, ReadyForQuery, then for the one query `reply`.
        fn serve(reply: Vec<u8>) -> (u16, thread::JoinHandle<String>) {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).unwrap();
                let mut startup = vec![0; u32::from_be_bytes(len) as usize - 4];
                stream.read_exact(&mut startup).unwrap();
                let mut hello = message(b'R', &[0, 0, 0, 0]);
                hello.extend(message(b'Z', b"I"));
                stream.write_all(&hello).unwrap();
                let mut header = [0u8; 5];
                stream.read_exact(&mut header).unwrap();
                assert_eq!(header[0], b'Q');
                let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                let mut sql = vec![0; len as usize - 4];
                stream.read_exact(&mut sql).unwrap();
                stream.write_all(&reply).unwrap();
                String::from_utf8(sql[..sql.len() - 1].to_vec()).unwrap()
            });
            (port, server)
        }
        let mut row = 2u16.to_be_bytes().to_vec();
        row.extend_from_slice(&2i32.to_be_bytes());
        row.extend_from_slice(b"42");
        row.extend_from_slice(&(-1i32).to_be_bytes());
        let mut reply = message(b'T', &[0, 0]);
        reply.extend(message(b'D', &row));
        reply.extend(message(b'C', b"SELECT 1\x00"));
        reply.extend(message(b'Z', b"I"));
        let (port, server) = serve(reply);
        let rows = simple_query(port, "db", "SELECT 42, NULL", Duration::from_secs(5));
        assert_eq!(server.join().unwrap(), "SELECT 42, NULL");
        assert_eq!(rows, Ok(vec![vec![Some("42".to_owned()), None]]));

        let mut reply = message(b'E', b"SERROR\x00C42P01\x00Mno such table\x00\x00");
        reply.extend(message(b'Z', b"I"));
        let (port, server) = serve(reply);
        let rows = simple_query(port, "db", "SELECT * FROM t", Duration::from_secs(5));
        server.join().unwrap();
        assert_eq!(
            rows,
            Err("ERROR: no such table (SQLSTATE 42P01)".to_owned())
        );
    }

    #[test]
    fn probe_reports_a_server_still_starting() {
        let reply = message(
            b'E',
            b"SFATAL\x00C57P03\x00Mthe database system is starting up\x00\x00",
        );
        assert_eq!(
            probe_against(reply),
            Err("FATAL: the database system is starting up (SQLSTATE 57P03)".to_owned())
        );
    }
}

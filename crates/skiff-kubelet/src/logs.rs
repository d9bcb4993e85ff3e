//! Container logs as the kubelet serves them: CRI log files (`<RFC3339Nano> <stream> <P|F>
//! <text>` per line, P for a partial line) turned back into the container's output, with
//! upstream's options (tailLines, sinceSeconds/sinceTime, timestamps, limitBytes, follow).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::mpsc;

use crate::cri::{Cri, v1 as cri};
use crate::labels;

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<usize>,
}

/// One CRI log record.
#[derive(Debug, PartialEq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut f = line.splitn(4, ' ');
    let time = f.next()?;
    let _stream = f.next()?;
    let tag = f.next()?;
    let text = f.next().unwrap_or("");
    Some(Record { time, partial: tag.split(':').next() == Some("P"), text })
}

/// What a record prints: its text, a newline unless partial, the timestamp first if asked.
fn render(r: &Record<'_>, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(r.time.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(r.text.as_bytes());
    if !r.partial {
        out.push(b'\n');
    }
}

fn keep(r: &Record<'_>, since: Option<Timestamp>) -> bool {
    match since {
        Some(s) => r.time.parse::<Timestamp>().is_ok_and(|t| t >= s),
        None => true,
    }
}

/// The existing content of a log, with tail and since applied.
pub fn initial(body: &str, o: &Options) -> Vec<u8> {
    let records: Vec<Record<'_>> = body.lines().filter_map(parse).filter(|r| keep(r, o.since)).collect();
    // tailLines counts whole lines: a line is its partial records plus the final one.
    let start = match o.tail_lines {
        Some(n) => {
            let mut full = 0;
            let mut idx = records.len();
            for (i, r) in records.iter().enumerate().rev() {
                if !r.partial {
                    if full == n {
                        break;
                    }
                    full += 1;
                }
                idx = i;
            }
            if n == 0 { records.len() } else { idx }
        }
        None => 0,
    };
    let mut out = Vec::new();
    for r in &records[start..] {
        render(r, o.timestamps, &mut out);
    }
    out
}

/// Why a log cannot be served (the text goes to the user as upstream's kubelet words it).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("container runtime: {0}")]
    Runtime(#[from] tonic::Status),
}

/// The runtime container (id, log path) the request is for.
pub async fn locate(cri: &Cri, namespace: &str, pod: &str, container: &str, previous: bool) -> Result<(String, PathBuf), LogError> {
    let sandboxes = cri.sandboxes(None).await?;
    let mine: Vec<&cri::PodSandbox> = sandboxes
        .iter()
        .filter(|s| {
            s.labels.get(labels::POD_NAMESPACE).map(String::as_str) == Some(namespace)
                && s.labels.get(labels::POD_NAME).map(String::as_str) == Some(pod)
        })
        .collect();
    if mine.is_empty() {
        return Err(LogError::NotFound(format!("pod {namespace}/{pod} is not running on this node")));
    }
    // The newest sandbox's containers of that name, newest attempt first.
    let mut found: Vec<(i64, u32, String)> = Vec::new();
    for s in mine.iter().take(1) {
        for c in cri.containers(Some(&s.id)).await? {
            if let Some(m) = &c.metadata
                && m.name == container
            {
                found.push((s.created_at, m.attempt, c.id.clone()));
            }
        }
    }
    found.sort_by_key(|f| std::cmp::Reverse((f.0, f.1)));
    let pick = if previous { found.get(1) } else { found.first() };
    let Some((_, _, id)) = pick else {
        return Err(if previous {
            LogError::BadRequest(format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"))
        } else {
            LogError::BadRequest(format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"))
        });
    };
    let status = cri.container_status(id).await?.ok_or_else(|| LogError::NotFound(format!("container {id} is gone")))?;
    Ok((id.clone(), PathBuf::from(status.log_path)))
}

/// Streams a log into `tx`: what is there, then (with follow) what is appended until the
/// container stops and the file has been read to its end, or the reader goes away.
pub async fn stream(cri: Cri, id: String, path: PathBuf, o: Options, tx: mpsc::Sender<Bytes>) {
    let mut sent = 0usize;
    let send = |tx: &mpsc::Sender<Bytes>, mut chunk: Vec<u8>, sent: &mut usize| {
        if let Some(limit) = o.limit_bytes {
            chunk.truncate(limit.saturating_sub(*sent));
        }
        *sent += chunk.len();
        let tx = tx.clone();
        async move { chunk.is_empty() || tx.send(Bytes::from(chunk)).await.is_ok() }
    };
    let (body, mut offset) = read_from(&path, 0);
    let (text, rest) = split_complete(&body);
    if !send(&tx, initial(text, &o), &mut sent).await || !o.follow {
        return;
    }
    // An unfinished last line is read again once it is complete.
    offset -= rest.len() as u64;
    let mut pending = String::new();
    let mut last_check = tokio::time::Instant::now();
    let mut running = true;
    loop {
        if o.limit_bytes.is_some_and(|l| sent >= l) {
            return;
        }
        let (more, new_offset) = read_from(&path, offset);
        if !more.is_empty() {
            offset = new_offset;
            pending.push_str(&more);
            let (complete, rest) = split_complete(&pending);
            let mut out = Vec::new();
            for r in complete.lines().filter_map(parse).filter(|r| keep(r, o.since)) {
                render(&r, o.timestamps, &mut out);
            }
            let rest = rest.to_string();
            pending = rest;
            if !send(&tx, out, &mut sent).await {
                return;
            }
            continue;
        }
        if !running {
            return;
        }
        if last_check.elapsed() >= Duration::from_secs(1) {
            last_check = tokio::time::Instant::now();
            running = matches!(cri.container_status(&id).await, Ok(Some(s)) if s.state == cri::ContainerState::ContainerRunning as i32);
            // One more read after it stopped picks up its last lines.
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The part of `s` up to its last newline, and the rest (a line still being written).
fn split_complete(s: &str) -> (&str, &str) {
    match s.rfind('\n') {
        Some(i) => (&s[..=i], &s[i + 1..]),
        None => ("", s),
    }
}

fn read_from(path: &Path, offset: u64) -> (String, u64) {
    let Ok(mut f) = std::fs::File::open(path) else { return (String::new(), offset) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    // A file shorter than what was read was rotated or truncated: start over.
    let offset = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return (String::new(), offset);
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let n = buf.len() as u64;
    (String::from_utf8_lossy(&buf).into_owned(), offset + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "2026-01-01T00:00:01.000000001Z stdout F one\n2026-01-01T00:00:02Z stderr P tw\n2026-01-01T00:00:02.5Z stderr F o\n2026-01-01T00:00:03Z stdout F three\n";

    #[test]
    fn records_join_partials_and_tail_counts_lines() {
        assert_eq!(parse("t stdout F hello world").unwrap(), Record { time: "t", partial: false, text: "hello world" });
        let all = initial(LOG, &Options::default());
        assert_eq!(String::from_utf8(all).unwrap(), "one\ntwo\nthree\n");
        let tail2 = initial(LOG, &Options { tail_lines: Some(2), ..Default::default() });
        assert_eq!(String::from_utf8(tail2).unwrap(), "two\nthree\n");
        let tail0 = initial(LOG, &Options { tail_lines: Some(0), ..Default::default() });
        assert!(tail0.is_empty());
        let since = initial(LOG, &Options { since: Some("2026-01-01T00:00:03Z".parse().unwrap()), ..Default::default() });
        assert_eq!(String::from_utf8(since).unwrap(), "three\n");
        let ts = initial(LOG, &Options { timestamps: true, tail_lines: Some(1), ..Default::default() });
        assert_eq!(String::from_utf8(ts).unwrap(), "2026-01-01T00:00:03Z three\n");
        assert_eq!(split_complete("a\nb"), ("a\n", "b"));
    }
}

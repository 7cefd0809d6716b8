//! `tcpstall export`: every episode since a time, open and ended, as JSON
//! lines or CSV, for backups and spreadsheets.
//!
//! The collector is asked page by page (`page_token`) until it says there
//! is no more, so an export is complete however many episodes there are.
//! Each episode is the view `tcpstall episodes --json` prints
//! (docs/cli-json.md): JSON lines carry it whole, CSV flattens its main
//! fields and the latest numbers of both ends into columns. A file is
//! written beside its final name and renamed when complete, so that a
//! half-written export never looks like a finished one.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;
use tcpstall_common::record::{EpisodeQuery, EpisodeSample};
use tcpstall_proto::convert;

use crate::model::{EndView, EpisodeView};
use crate::{exit, Client, Failure};

/// Episodes asked for at once.
pub const PAGE: u32 = 500;

/// The formats `--format` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line, the fields of `tcpstall episodes --json`.
    Jsonl,
    /// A header row, then one row per episode (RFC 4180).
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Only episodes that started within this long before the export
    /// (e.g. 30m, 24h, 7days) [default: all stored].
    #[arg(long, value_name = "DURATION", value_parser = tcpstall_common::duration::parse)]
    pub since: Option<Duration>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    pub format: Format,
    /// Write to this file (replaced only once the export is complete)
    /// instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// With --format jsonl: each episode's stored samples of both ends too,
    /// oldest first, in `samples` (CSV rows have no room for them).
    #[arg(long)]
    pub samples: bool,
}

/// One stored sample as `--samples` writes it: which end, when, and the
/// fields of an end (docs/cli-json.md).
#[derive(Debug, Serialize)]
pub struct SampleJson {
    /// `a` (the stuck sender) or `b` (its peer).
    pub side: String,
    /// RFC 3339, UTC, collector clock: when it was stored.
    pub at: String,
    #[serde(flatten)]
    pub end: EndView,
}

/// An episode with its samples.
#[derive(Debug, Serialize)]
struct WithSamples<'a> {
    #[serde(flatten)]
    episode: &'a EpisodeView,
    samples: Vec<SampleJson>,
}

/// The samples of an episode as `--samples` writes them (one the CLI
/// cannot read was left out when the answer was read, as it is left out of
/// `show`'s latest ends).
pub fn samples_json(samples: &[EpisodeSample]) -> Vec<SampleJson> {
    samples
        .iter()
        .map(|s| SampleJson {
            side: s.side.as_str().to_string(),
            at: crate::model::rfc3339(s.at_ms),
            end: EndView::new(&s.host, s.sample.flow, Some(&s.sample)),
        })
        .collect()
}

/// The CSV columns, in order (new ones go at the end).
pub const CSV_HEADER: [&str; 33] = [
    "id",
    "diagnosis",
    "open",
    "started_at",
    "ended_at",
    "duration_s",
    "stuck",
    "blame",
    "end_reason",
    "peer_note",
    "summary",
    "a_host",
    "a_local",
    "a_remote",
    "a_state",
    "a_sendq",
    "a_notsent",
    "a_inflight",
    "a_snd_una",
    "a_snd_nxt",
    "a_write_seq",
    "a_snd_wnd",
    "a_cork",
    "b_host",
    "b_recvq",
    "b_rcv_nxt",
    "b_copied",
    "b_rcv_wnd",
    "b_local",
    "b_remote",
    "via_host",
    "via",
    "missing",
];

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// One episode as a CSV row of [`CSV_HEADER`]'s columns; unknown numbers
/// are empty, never 0.
pub fn csv_row(e: &EpisodeView) -> Vec<String> {
    let a = &e.peer.a;
    let b: Option<&EndView> = e.peer.b.as_ref();
    vec![
        e.id.to_string(),
        e.diagnosis.clone(),
        e.open.to_string(),
        e.started_at.clone(),
        opt(e.ended_at.as_ref()),
        e.duration_s.to_string(),
        e.stuck.to_string(),
        e.blame.to_string(),
        opt(e.end_reason.as_ref()),
        opt(e.peer_note.as_ref()),
        e.summary.clone(),
        a.host.clone(),
        a.local.clone(),
        a.remote.clone(),
        opt(a.state.map(|s| s.name())),
        opt(a.json.sendq),
        opt(a.json.notsent),
        opt(a.json.inflight),
        opt(a.json.snd_una),
        opt(a.json.snd_nxt),
        opt(a.json.write_seq),
        opt(a.json.snd_wnd),
        opt(a.cork),
        opt(b.map(|b| &b.host)),
        opt(b.and_then(|b| b.json.recvq)),
        opt(b.and_then(|b| b.json.rcv_nxt)),
        opt(b.and_then(|b| b.json.copied)),
        opt(b.and_then(|b| b.json.rcv_wnd)),
        opt(b.map(|b| &b.local)),
        opt(b.map(|b| &b.remote)),
        opt(e.via.as_ref().map(|v| &v.host)),
        opt(e.via.as_ref().map(|v| v.translation.entry)),
        e.missing.join(" "),
    ]
}

/// Where the export goes: standard output, or a temporary file beside the
/// final one.
enum Sink {
    Stdout(std::io::BufWriter<std::io::Stdout>),
    File {
        tmp: std::io::BufWriter<tempfile::NamedTempFile>,
        path: PathBuf,
    },
}

impl Sink {
    fn open(output: Option<&Path>) -> Result<Sink, Failure> {
        let Some(path) = output else {
            return Ok(Sink::Stdout(std::io::BufWriter::new(std::io::stdout())));
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(".tcpstall-export-")
            .tempfile_in(dir)
            .map_err(|e| Failure::new(exit::FAILED, format!("--output {}: {e}", path.display())))?;
        Ok(Sink::File {
            tmp: std::io::BufWriter::new(tmp),
            path: path.to_path_buf(),
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Sink::Stdout(w) => w,
            Sink::File { tmp, .. } => tmp,
        }
    }

    /// Flushes, and gives the file its final name.
    fn finish(self) -> Result<(), String> {
        match self {
            Sink::Stdout(mut w) => w.flush().map_err(|e| e.to_string()),
            Sink::File { tmp, path } => {
                let tmp = tmp.into_inner().map_err(|e| e.error().to_string())?;
                tmp.as_file().sync_all().map_err(|e| e.to_string())?;
                tmp.persist(&path).map_err(|e| e.error.to_string())?;
                Ok(())
            }
        }
    }
}

/// What clap cannot check of the flags; before the collector is asked.
pub fn check(args: &ExportArgs) -> Result<(), Failure> {
    if args.samples && args.format != Format::Jsonl {
        return Err(Failure::new(
            exit::USAGE,
            "--samples needs --format jsonl (CSV rows have no room for them)",
        ));
    }
    Ok(())
}

/// Runs the export; says on stderr how many episodes it wrote.
pub async fn run(q: &mut Client, args: &ExportArgs) -> Result<u8, Failure> {
    let mut sink = Sink::open(args.output.as_deref())?;
    let written = write_all(q, args, sink.writer()).await?;
    sink.finish()
        .map_err(|e| Failure::new(exit::FAILED, format!("writing the export: {e}")))?;
    match &args.output {
        Some(path) => eprintln!(
            "tcpstall: exported {written} episodes to {}",
            path.display()
        ),
        None => eprintln!("tcpstall: exported {written} episodes"),
    }
    Ok(exit::OK)
}

async fn write_all(q: &mut Client, args: &ExportArgs, out: &mut dyn Write) -> Result<u64, Failure> {
    let failed =
        |e: &dyn std::fmt::Display| Failure::new(exit::FAILED, format!("writing the export: {e}"));
    let mut rows = match args.format {
        Format::Jsonl => Rows::Json(out),
        Format::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record(CSV_HEADER).map_err(|e| failed(&e))?;
            Rows::Csv(Box::new(w))
        }
    };
    // The cutoff is the export's start: later pages ask for a longer
    // `since` by the time gone, so that it does not move.
    let started = Instant::now();
    let mut token = None;
    let mut seen = HashSet::new();
    let mut written = 0u64;
    loop {
        let query = EpisodeQuery {
            since: args.since.map(|d| d + started.elapsed()),
            limit: PAGE,
            page_token: token.take(),
            ..Default::default()
        };
        let page = q
            .list_episodes(convert::episode_query_to_wire(&query))
            .await
            .map_err(|s| crate::status_failure("listing episodes", s))?
            .into_inner();
        let page = convert::episode_page_from_wire(page).map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!("listing episodes: the collector's answer: {e}"),
            )
        })?;
        let full = page.episodes.len() >= PAGE as usize;
        for e in &page.episodes {
            if !seen.insert(e.id) {
                continue;
            }
            let (view, detail) = match crate::episode_samples(q, e.id).await {
                Ok(found) => found,
                // Deleted by retention since the list: not an error.
                Err(f) if f.code == exit::NOT_FOUND => continue,
                Err(f) => return Err(f),
            };
            match &mut rows {
                Rows::Csv(w) => w.write_record(csv_row(&view)).map_err(|e| failed(&e))?,
                Rows::Json(out) => {
                    let written = if args.samples {
                        let with = WithSamples {
                            episode: &view,
                            samples: samples_json(&detail.samples),
                        };
                        serde_json::to_writer(&mut **out, &with)
                    } else {
                        serde_json::to_writer(&mut **out, &view)
                    };
                    written.map_err(|e| failed(&e))?;
                    writeln!(out).map_err(|e| failed(&e))?;
                }
            }
            written += 1;
        }
        let Some(next) = page.next_page_token else {
            if full {
                // A full page and no way on: a collector from before
                // paging. Better no export than a silently partial one.
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "the collector returned {PAGE} episodes and no next page: it is older \
                         than paging (upgrade it to export more than {PAGE} episodes)"
                    ),
                ));
            }
            break;
        };
        token = Some(next);
    }
    if let Rows::Csv(w) = &mut rows {
        w.flush().map_err(|e| failed(&e))?;
    }
    Ok(written)
}

/// The rows' writer of each format.
enum Rows<'a> {
    Json(&'a mut dyn Write),
    Csv(Box<csv::Writer<&'a mut dyn Write>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Ends;

    #[test]
    fn a_row_has_every_column_and_unknowns_are_empty() {
        let flow = tcpstall_common::FlowTuple::new(
            "198.18.0.1:80".parse().expect("addr"),
            "198.18.0.2:4000".parse().expect("addr"),
        );
        let view = EpisodeView {
            id: 7,
            diagnosis: "peer_unmonitored".into(),
            open: true,
            started_at: "2026-11-26T10:00:00Z".into(),
            ended_at: None,
            duration_s: 12.5,
            stuck: 4096,
            summary: "B not monitored, \"one-sided\", evidence".into(),
            blame: "unknown",
            peer_note: None,
            via: None,
            end_reason: None,
            evidence: Default::default(),
            rested_on: vec!["a_sendq".into()],
            missing: vec!["b_rcv_nxt".into(), "b_recvq".into()],
            peer: Ends {
                a: EndView::new("web-1", flow, None),
                b: None,
            },
            incident: None,
            started_at_ms: 0,
        };
        let row = csv_row(&view);
        assert_eq!(row.len(), CSV_HEADER.len());
        let col = |name: &str| {
            let i = CSV_HEADER.iter().position(|c| *c == name).expect("column");
            row[i].clone()
        };
        assert_eq!(col("id"), "7");
        assert_eq!(col("open"), "true");
        assert_eq!(col("ended_at"), "");
        assert_eq!(col("a_local"), "198.18.0.1:80");
        assert_eq!(col("a_sendq"), "", "never sampled: unknown, not 0");
        assert_eq!(col("b_host"), "");
        assert_eq!(
            (col("b_local"), col("via_host"), col("via")),
            ("".into(), "".into(), "".into())
        );
        assert_eq!(col("missing"), "b_rcv_nxt b_recvq");
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&row).expect("write");
        let line = String::from_utf8(w.into_inner().expect("flush")).expect("utf-8");
        assert!(
            line.contains(",\"B not monitored, \"\"one-sided\"\", evidence\","),
            "RFC 4180 quoting: {line}"
        );
    }
}

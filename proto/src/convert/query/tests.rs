//! Unit tests of the query messages' conversions: each domain form goes to
//! the wire and back unchanged, and what a client reads of the collector's
//! answers is what the collector meant.

use prost::Message;
use tcpstall_common::record::{EpisodeRow, DEFAULT_LIST_LIMIT};
use tcpstall_common::{EndSample, Packed};

use super::*;
use crate::convert::{endpoint_to_wire, pack, unpack};

fn sample() -> EndSample {
    crate::convert::tests::sample()
}

const NOW_MS: i64 = 1_732_000_000_000;

fn flow() -> FlowTuple {
    FlowTuple::new(
        "198.18.0.1:7000".parse().expect("addr"),
        "198.18.0.2:40000".parse().expect("addr"),
    )
}

fn episode(id: i64, started_at_ms: i64) -> Episode {
    Episode {
        id,
        diagnosis: "window_update_lost".into(),
        summary: "B advertised a window A never saw".into(),
        evidence: [
            ("a_snd_wnd".to_string(), 0),
            ("b_rcv_wnd".to_string(), 65_536),
        ]
        .into(),
        basis: VerdictBasis {
            rested_on: vec!["a_snd_wnd".into(), "b_rmem_alloc".into(), "b_rcvbuf".into()],
            missing: vec!["b_rcv_wnd".into()],
        },
        started_at_ms,
        ended_at_ms: Some(started_at_ms + 30_000),
        duration_ms: 30_000,
        stuck_bytes: 4096,
        a_host: "web-1".into(),
        a_flow: flow(),
        b_host: Some("db-7".into()),
        peer_note: Some("B answered late".into()),
        via: Some(via()),
        open: false,
        end_reason: Some("moved".into()),
    }
}

/// The DNAT that joined an episode's ends, on B's host.
fn via() -> JoinedVia {
    JoinedVia {
        host: "db-7".into(),
        translation: crate::convert::tests::translation(),
    }
}

/// An open episode with every optional part absent.
fn bare(id: i64) -> Episode {
    Episode {
        ended_at_ms: None,
        b_host: None,
        peer_note: None,
        via: None,
        end_reason: None,
        open: true,
        evidence: Default::default(),
        ..episode(id, NOW_MS - 12_000)
    }
}

/// What a client reads from `msg` as sent: its encoding decoded as `T`.
fn read<T: Message + Default>(msg: &impl Message) -> T {
    T::decode(&*msg.encode_to_vec()).expect("a client decodes it")
}

#[test]
fn an_episode_goes_to_the_wire_and_back_whole() {
    for e in [episode(7, NOW_MS - 60_000), bare(8)] {
        let wire = episode_to_wire(e.clone());
        assert_eq!(episode_from_wire(read(&wire)), Ok(e));
    }
    let wire = episode_to_wire(bare(8));
    assert_eq!(
        (
            wire.ended_at_ms,
            wire.b_host.as_str(),
            wire.peer_note.as_str(),
            wire.end_reason.as_str()
        ),
        (0, "", "", ""),
        "absent is the wire's default"
    );
    assert_eq!(wire.via, None);
    let wire = episode_to_wire(episode(7, NOW_MS));
    assert_eq!(
        wire.via,
        Some(v1::JoinedVia {
            host: "db-7".into(),
            translation: Some(translation_to_wire(crate::convert::tests::translation())),
        })
    );
}

/// A translation an episode names must be whole: a host, both tuples,
/// each a 4-tuple, of one family. The error names the part.
#[test]
fn an_episode_with_a_malformed_translation_is_refused() {
    let good = via_to_wire(via());
    let entry = |v: &v1::JoinedVia| v.translation.clone().unwrap_or_default();
    let mut cases = Vec::new();
    let mut v = good.clone();
    v.host.clear();
    cases.push(("no host", v));
    let mut v = good.clone();
    v.translation = None;
    cases.push(("via.translation", v));
    let mut v = good.clone();
    let mut t = entry(&v);
    t.original = None;
    v.translation = Some(t);
    cases.push(("flow", v));
    let mut v = good.clone();
    let mut t = entry(&v);
    t.reply = t.reply.map(|r| v1::FlowTuple { remote: None, ..r });
    v.translation = Some(t);
    cases.push(("flow.remote", v));
    let mut v = good.clone();
    let mut t = entry(&v);
    let three_bytes = v1::Endpoint {
        ip: Some(v1::Ip {
            octets: vec![10, 0, 0],
        }),
        port: 80,
    };
    t.original = t.original.map(|o| v1::FlowTuple {
        local: Some(three_bytes),
        ..o
    });
    v.translation = Some(t);
    cases.push(("flow.local", v));
    let mut v = good.clone();
    let mut t = entry(&v);
    let v6 = endpoint_to_wire("[2001:db8::1]:80".parse().expect("addr"));
    t.reply = t.reply.map(|r| v1::FlowTuple {
        local: Some(v6),
        ..r
    });
    v.translation = Some(t);
    cases.push(("two families", v));
    for (names, bad) in cases {
        let mut wire = episode_to_wire(episode(7, NOW_MS));
        wire.via = Some(bad);
        match episode_from_wire(wire) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("episode") && msg.contains(names),
                    "{names}: {msg}"
                );
            }
            Ok(e) => panic!("{names}: accepted {e:?}"),
        }
    }
    let mut wire = episode_to_wire(episode(7, NOW_MS));
    wire.via = Some(good);
    assert_eq!(
        episode_from_wire(wire),
        Ok(episode(7, NOW_MS)),
        "the good one reads"
    );
}

#[test]
fn an_episode_without_a_flow_is_refused() {
    let mut wire = episode_to_wire(bare(8));
    wire.a_flow = None;
    assert!(episode_from_wire(wire.clone()).is_err());
    wire.a_flow = Some(v1::FlowTuple {
        local: Some(v1::Endpoint {
            ip: Some(v1::Ip {
                octets: vec![1, 2, 3],
            }),
            port: 80,
        }),
        remote: None,
    });
    assert!(episode_from_wire(wire).is_err());
}

/// What the query service answered before `answer` moved to the domain:
/// an open episode lasts until now, and the stored fields go out as they
/// are.
#[test]
fn a_stored_row_answers_as_it_did() {
    let row = EpisodeRow {
        id: 3,
        diagnosis: "peer_not_reading".into(),
        summary: "B is not reading".into(),
        evidence: [("b_recvq".to_string(), 4096)].into(),
        basis: Default::default(),
        started_at_ms: NOW_MS - 20_000,
        duration_ms: 12_000,
        stuck_bytes: 4096,
        a_host: "web-1".into(),
        a_netns: "host".into(),
        a_flow: flow(),
        a_cookie: 9,
        b_host: None,
        peer_note: Some("no agent covers 198.18.0.2".into()),
        via: None,
        open: true,
        ended_at_ms: None,
        end_reason: None,
    };
    let wire = episode_to_wire(row.clone().answer(NOW_MS));
    assert_eq!(wire.duration_ms, 20_000);
    assert_eq!(wire.a_flow, Some(flow_to_wire(row.a_flow)));
    assert_eq!(wire.peer_note, "no agent covers 198.18.0.2");
    assert_eq!(wire.evidence.get("b_recvq"), Some(&4096));
    assert_eq!((wire.b_host.as_str(), wire.ended_at_ms), ("", 0));
    assert_eq!(wire.via, None);
    let joined = EpisodeRow {
        via: Some(via()),
        ..row
    };
    assert_eq!(
        episode_from_wire(episode_to_wire(joined.answer(NOW_MS))).map(|e| e.via),
        Ok(Some(via())),
        "the translation goes out as stored"
    );
}

#[test]
fn page_tokens_round_trip_and_strangers_are_refused() {
    let t = page_token(1_732_000_000_123, 42);
    assert_eq!(parse_page_token(&t), Some((1_732_000_000_123, 42)));
    assert_eq!(
        parse_page_token(&page_token(-1, i64::MAX)),
        Some((-1, i64::MAX))
    );
    for bad in ["", "12", "a.b", "1.2.3", "1.", ".2"] {
        assert_eq!(parse_page_token(bad), None, "{bad:?}");
    }
}

/// A full page gives the place of its last episode, which asked again
/// comes back as the filter's `after`; a short page is the last.
#[test]
fn a_full_page_leads_on_and_a_short_one_ends() {
    let eps = vec![episode(9, NOW_MS - 1_000), episode(4, NOW_MS - 5_000)];
    let page = episode_page_from_wire(read(&episode_page_to_wire(eps.clone(), 2)))
        .expect("the page converts");
    assert_eq!(page.episodes, eps);
    let token = page.next_page_token.expect("a full page leads on");
    let next = EpisodeQuery {
        limit: 2,
        page_token: Some(token),
        ..Default::default()
    };
    let filter = episode_filter_from_wire(read(&episode_query_to_wire(&next)), NOW_MS)
        .expect("our own token");
    assert_eq!(filter.after, Some((NOW_MS - 5_000, 4)));

    let last = episode_page_from_wire(read(&episode_page_to_wire(eps.clone(), 3)))
        .expect("the page converts");
    assert_eq!((last.episodes, last.next_page_token), (eps, None));
    let empty = episode_page_to_wire(Vec::new(), 0);
    assert_eq!(empty.next_page_token, "", "nothing to go on from");
}

#[test]
fn a_page_with_an_episode_that_does_not_convert_is_refused() {
    let mut wire = episode_page_to_wire(vec![bare(1), bare(2)], 10);
    wire.episodes[1].a_flow = None;
    assert!(episode_page_from_wire(wire).is_err());
}

#[test]
fn an_operators_list_query_reads_as_the_stores_filter() {
    let q = EpisodeQuery {
        since: Some(Duration::from_secs(1800)),
        host: Some("web-1".into()),
        diagnosis: Some("data_lost".into()),
        open_only: true,
        limit: 50,
        page_token: None,
    };
    let f = episode_filter_from_wire(read(&episode_query_to_wire(&q)), NOW_MS).expect("valid");
    assert_eq!(
        f,
        EpisodeFilter {
            since_ms: Some(NOW_MS - 1_800_000),
            host: Some("web-1".into()),
            diagnosis: Some("data_lost".into()),
            open_only: true,
            limit: 50,
            after: None,
        }
    );
    let any = episode_filter_from_wire(
        read(&episode_query_to_wire(&EpisodeQuery::default())),
        NOW_MS,
    )
    .expect("valid");
    assert_eq!(any, EpisodeFilter::default());
    assert_eq!(any.effective_limit(), DEFAULT_LIST_LIMIT);
    // A window under a second is one second, not "any".
    let short = EpisodeQuery {
        since: Some(Duration::from_millis(300)),
        ..Default::default()
    };
    assert_eq!(episode_query_to_wire(&short).since_s, 1);
}

#[test]
fn a_list_request_past_the_limits_is_refused_and_a_huge_window_is_capped() {
    let over = v1::ListEpisodesRequest {
        limit: MAX_LIST_LIMIT + 1,
        ..Default::default()
    };
    assert_eq!(
        episode_filter_from_wire(over, NOW_MS),
        Err(ConvertError::Invalid(format!(
            "limit {} above {MAX_LIST_LIMIT}",
            MAX_LIST_LIMIT + 1
        )))
    );
    let stranger = v1::ListEpisodesRequest {
        page_token: "yesterday".into(),
        ..Default::default()
    };
    assert_eq!(
        episode_filter_from_wire(stranger, NOW_MS),
        Err(ConvertError::Invalid(
            "page_token `yesterday` is not one this collector gave".into()
        ))
    );
    let forever = v1::ListEpisodesRequest {
        since_s: u64::MAX,
        ..Default::default()
    };
    let f = episode_filter_from_wire(forever, NOW_MS).expect("valid");
    assert_eq!(f.since_ms, Some(NOW_MS - millis_i64(MAX_WINDOW)));
}

#[test]
fn an_operators_held_query_reads_as_whole_minutes() {
    let q = HeldQuery {
        since: Some(Duration::from_secs(3600)),
        host: Some("db-7".into()),
    };
    let now_ms = 90 * 60_000 + 12_345;
    let f = held_filter_from_wire(read(&held_query_to_wire(&q)), now_ms);
    assert_eq!(
        f,
        HeldFilter {
            since_ms: Some(30 * 60_000),
            host: Some("db-7".into()),
        },
        "from the start of the minute the window starts in"
    );
    let all = held_filter_from_wire(read(&held_query_to_wire(&HeldQuery::default())), now_ms);
    assert_eq!(all, HeldFilter::default());
}

#[test]
fn the_episode_and_flow_requests_go_and_come_back() {
    assert_eq!(
        episode_request_from_wire(&read(&episode_request_to_wire(42))),
        42
    );
    assert_eq!(
        flow_request_from_wire(&read(&flow_request_to_wire(flow()))),
        Ok(flow())
    );
    assert!(flow_request_from_wire(&v1::GetFlowRequest { flow: None }).is_err());
}

/// A sample as an agent sends it: with its reason, and with what the
/// collector's reading normalises away (a cork source beside no cork
/// value, an owner reason beside an owner).
fn agent_bytes(s: &EndSample) -> Vec<u8> {
    let mut w = sample_to_wire(s, v1::SampleReason::Suspect);
    w.cork = None;
    w.cork_source = v1::FactSource::Bpf as i32;
    w.owner_missing = v1::OwnerMissing::NoPermission as i32;
    w.encode_to_vec()
}

/// The sample a reader gets from [`agent_bytes`]: the facts without
/// what they normalise away.
fn normalised(s: &EndSample) -> EndSample {
    EndSample {
        cork: None,
        cork_source: None,
        ..s.clone()
    }
}

fn stored(side: Side, at_ms: i64, bytes: Vec<u8>) -> StoredSample {
    StoredSample {
        side,
        host: format!("host-{side}"),
        at_ms,
        sample: Packed::from_bytes(bytes),
    }
}

/// GetEpisode sends the stored bytes as they are; a client reads them as
/// `v1` and, through `convert`, gets the sample the collector unpacks.
#[test]
fn a_stored_sample_goes_out_as_its_stored_bytes() {
    let s = sample();
    let bytes = agent_bytes(&s);
    let st = stored(Side::A, NOW_MS, bytes.clone());
    let expected = unpack(&st.sample).expect("the collector reads its own store");
    assert_eq!(expected, normalised(&s));

    let sent = stored_sample_to_wire(st).encode_to_vec();
    let as_raw = raw::EndSample::decode(&*sent).expect("decodes as raw");
    assert_eq!(
        as_raw.sample.as_deref(),
        Some(&bytes[..]),
        "the stored bytes, not a re-encoding"
    );
    let as_v1 = v1::EndSample::decode(&*sent).expect("a client decodes it");
    let agents = as_v1.sample.as_ref().expect("a sample");
    assert_eq!(
        agents.reason,
        v1::SampleReason::Suspect as i32,
        "the agent's encoding, reason and all"
    );
    assert_eq!(agents.cork_source, v1::FactSource::Bpf as i32);
    assert_eq!(
        episode_sample_from_wire(as_v1),
        Ok(EpisodeSample {
            side: Side::A,
            host: "host-a".into(),
            at_ms: NOW_MS,
            sample: expected,
        })
    );
}

#[test]
fn an_episode_and_its_samples_go_to_the_wire_and_back() {
    let e = episode(7, NOW_MS - 60_000);
    let a = sample();
    let b = EndSample {
        flow: a.flow.reversed(),
        cookie: 43,
        ..sample()
    };
    let samples = vec![
        stored(Side::A, NOW_MS - 50_000, agent_bytes(&a)),
        stored(Side::B, NOW_MS - 49_000, pack(&b).as_bytes().to_vec()),
    ];
    let answer = episode_detail_to_wire(e.clone(), samples);
    let detail: EpisodeDetail =
        episode_detail_from_wire(read(&answer)).expect("the answer converts");
    assert_eq!(detail.episode, e);
    assert_eq!(detail.unreadable, 0);
    assert_eq!(
        detail.samples,
        vec![
            EpisodeSample {
                side: Side::A,
                host: "host-a".into(),
                at_ms: NOW_MS - 50_000,
                sample: normalised(&a),
            },
            EpisodeSample {
                side: Side::B,
                host: "host-b".into(),
                at_ms: NOW_MS - 49_000,
                sample: b,
            },
        ]
    );
}

/// A sample a client cannot read is left out and counted; the episode
/// must be there.
#[test]
fn unreadable_samples_are_counted_and_a_missing_episode_refused() {
    let good = stored(Side::A, NOW_MS, agent_bytes(&sample()));
    let mut answer = read::<v1::GetEpisodeResponse>(&episode_detail_to_wire(
        bare(1),
        vec![good.clone(), good.clone(), good],
    ));
    answer.samples[0].side = "c".into();
    answer.samples[1].sample = None;
    let detail = episode_detail_from_wire(answer.clone()).expect("the episode converts");
    assert_eq!((detail.samples.len(), detail.unreadable), (1, 2));
    answer.episode = None;
    assert_eq!(
        episode_detail_from_wire(answer),
        Err(ConvertError::Missing("episode"))
    );
}

#[test]
fn a_flows_ends_go_to_the_wire_and_back() {
    let a = FlowEnd {
        host: "web-1".into(),
        sample: sample(),
    };
    let b = FlowEnd {
        host: "db-7".into(),
        sample: EndSample {
            flow: sample().flow.reversed(),
            ..sample()
        },
    };
    for ends in [
        FlowEnds {
            a: Some(a.clone()),
            b: Some(b.clone()),
        },
        FlowEnds {
            a: Some(a),
            b: None,
        },
        FlowEnds {
            a: None,
            b: Some(b),
        },
        FlowEnds::default(),
    ] {
        let wire = flow_ends_to_wire(ends.clone());
        for s in [&wire.a, &wire.b].into_iter().flatten() {
            assert_eq!(s.reason, v1::SampleReason::Watched as i32);
        }
        assert_eq!(flow_ends_from_wire(read(&wire)), Ok(ends));
    }
}

#[test]
fn a_flow_end_whose_sample_does_not_convert_is_refused() {
    let mut wire = flow_ends_to_wire(FlowEnds {
        a: Some(FlowEnd {
            host: "web-1".into(),
            sample: sample(),
        }),
        b: None,
    });
    if let Some(s) = wire.a.as_mut() {
        s.state = 10; // LISTEN: never a connection's end
    }
    let err = flow_ends_from_wire(wire).expect_err("refused");
    assert!(err.to_string().starts_with("a: "), "{err}");
}

#[test]
fn held_span_counts_go_to_the_wire_and_back() {
    let count = |b_host: Option<&str>, end, le_ms, count| HeldSpanCount {
        a_host: "web-1".into(),
        b_host: b_host.map(String::from),
        end: Some(end),
        le_ms,
        count,
        episodes: count / 2,
        total_ms: count * 9_000,
        max_ms: 9_600,
    };
    let spans = HeldSpans {
        counts: vec![
            count(Some("db-7"), HeldEnd::Reset, 10_000, 3),
            count(Some("db-7"), HeldEnd::Moved, 2_000, 4),
            count(None, HeldEnd::Drained, 0, 1),
        ],
        threshold: Duration::from_millis(10_500),
    };
    let wire = held_spans_to_wire(spans.clone());
    assert_eq!(
        wire.counts[2].b_host, "",
        "no peer host is the wire's empty"
    );
    assert_eq!(wire.threshold_ms, 10_500);
    assert_eq!(held_spans_from_wire(read(&wire)), spans);
}

/// A newer collector may name an end this build does not: its spans are
/// still counted.
#[test]
fn an_end_this_build_does_not_name_is_kept_unnamed() {
    let wire = v1::ListHeldSpansResponse {
        counts: vec![v1::HeldSpanCount {
            a_host: "web-1".into(),
            end: "evaporated".into(),
            count: 2,
            ..Default::default()
        }],
        threshold_ms: 10_000,
    };
    let spans = held_spans_from_wire(wire);
    assert_eq!(spans.counts[0].end, None);
    assert_eq!(spans.counts[0].count, 2);
}

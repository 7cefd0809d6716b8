//! Unit tests of the ingest messages' conversions.

use prost::Message;
use tcpstall_common::{EndSample, HeldEnd, HeldSpan, OwnerMissing, SampleReason};

use super::*;
use crate::convert::{endpoint_to_wire, held_to_wire, reasoned_sample_to_wire};
use crate::raw::{self, agent_message};

fn sample() -> EndSample {
    crate::convert::tests::sample()
}

#[test]
fn owner_nodelay_and_absolute_facts_survive_packing() {
    let mut s = sample();
    assert!(s.owner.is_some() && s.absolute.is_some() && s.nodelay.is_some());
    assert!(s.translation.is_some());
    assert_eq!(unpack(&pack(&s)), Some(s.clone()));
    s.owner = None;
    s.owner_missing = Some(OwnerMissing::NoPermission);
    assert_eq!(unpack(&pack(&s)), Some(s));
}

#[test]
fn a_packed_sample_comes_back_whole_and_smaller() {
    let mut s = sample();
    s.owner = None;
    s.absolute = None;
    s.translation = None;
    let p = pack(&s);
    assert_eq!(unpack(&p), Some(s));
    assert!(
        p.len() < std::mem::size_of::<EndSample>() / 2,
        "{} bytes packed vs {} decoded",
        p.len(),
        std::mem::size_of::<EndSample>()
    );
}

/// Each sample is read as a slice of its message (no copy per sample),
/// and what the collector keeps is a copy of its own: a kept slice would
/// hold the whole message's buffer for as long as the suspect lives.
#[test]
fn samples_are_read_in_place_and_kept_as_copies_of_their_own() {
    let ends: Vec<_> = (1..=3)
        .map(|cookie| EndSample { cookie, ..sample() })
        .collect();
    let reasons = [
        v1::SampleReason::Suspect,
        v1::SampleReason::Released,
        v1::SampleReason::Watched,
    ];
    let wire: Vec<_> = ends
        .iter()
        .zip(reasons)
        .map(|(e, r)| sample_to_wire(e, r))
        .collect();
    let msg = v1::AgentMessage {
        body: Some(v1::agent_message::Body::Batch(v1::Batch {
            samples: wire,
            ..Default::default()
        })),
    };
    let buffer = prost::bytes::Bytes::from(msg.encode_to_vec());
    let within = |p: &[u8]| buffer.as_ptr_range().contains(&p.as_ptr());
    let Some(agent_message::Body::Batch(b)) = raw::AgentMessage::decode(buffer.clone())
        .expect("decodes")
        .body
    else {
        panic!("not a batch");
    };
    assert!(b.samples.iter().all(|s| within(s)), "a sample was copied");
    let batch = batch_from_wire(b, 100).expect("a valid batch");
    assert_eq!(batch.samples.len(), 3);
    // A released sample is not kept; the others are, outside the message.
    assert!(batch.packed[1].is_none());
    for i in [0, 2] {
        let packed = batch.packed[i].as_ref().expect("kept");
        assert!(!within(packed.as_bytes()), "sample {i} holds the message");
        let back = unpack(packed).expect("unpacks");
        assert_eq!(back, batch.samples[i].1);
        assert_eq!(back, ends[i]);
    }
}

/// A held span comes through on a release and a closing, is ignored on
/// anything else, and one that cannot be refuses the batch.
#[test]
fn held_spans_are_read_checked_and_refused_when_impossible() {
    let ms = Duration::from_millis;
    let span = HeldSpan::new(ms(1_000), ms(11_000), ms(11_250), HeldEnd::Reset).expect("span");
    let wire_span = held_to_wire(&span);
    let end = sample();
    let released = reasoned_sample_to_wire(&SampleReason::Released(Some(span)), &end);
    let mut suspect = sample_to_wire(&end, v1::SampleReason::Suspect);
    suspect.held = Some(wire_span);
    let closed = v1::Closed {
        netns: "host".into(),
        local: Some(endpoint_to_wire(end.flow.local)),
        remote: Some(endpoint_to_wire(end.flow.remote)),
        cookie: 3,
        held: Some(wire_span),
    };
    let raw = |samples: Vec<v1::Sample>, closed: Vec<v1::Closed>| raw::Batch {
        samples: samples
            .iter()
            .map(|s| prost::bytes::Bytes::from(s.encode_to_vec()))
            .collect(),
        closed,
        ..raw::Batch::default()
    };
    let b = batch_from_wire(
        raw(vec![released.clone(), suspect], vec![closed.clone()]),
        100,
    )
    .expect("valid");
    assert_eq!(b.samples[0].0, SampleReason::Released(Some(span)));
    assert_eq!(
        b.samples[1].0,
        SampleReason::Suspect,
        "a span on the release only"
    );
    assert_eq!(b.closed[0].held, Some(span));
    // Out of order, or with no end named: the batch is refused.
    let mut bad = released;
    bad.held = Some(v1::Held {
        ended_us: 10,
        ..wire_span
    });
    let err = batch_from_wire(raw(vec![bad], vec![]), 100).expect_err("refused");
    assert!(
        matches!(err, ConvertError::Sample { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("samples[0]"), "{err}");
    let mut bad = closed;
    bad.held = Some(v1::Held {
        end: 0,
        ..wire_span
    });
    let err = batch_from_wire(raw(vec![], vec![bad]), 100).expect_err("refused");
    assert!(matches!(err, ConvertError::Held(_)), "{err}");
    assert!(err.to_string().contains("held"), "{err}");
}

#[test]
fn a_batch_over_the_bound_is_refused_before_anything_is_decoded() {
    let b = raw::Batch {
        samples: vec![prost::bytes::Bytes::from_static(&[0xff; 8]); 3],
        ..raw::Batch::default()
    };
    let err = batch_from_wire(b, 2).expect_err("refused");
    assert_eq!(
        err,
        ConvertError::TooMany {
            what: "batch",
            n: 3,
            max: 2
        }
    );
    assert_eq!(err.to_string(), "batch of 3 entries, at most 2");
}

#[test]
fn a_hello_is_checked_field_by_field() {
    let good = v1::Hello {
        protocol: crate::PROTOCOL_VERSION,
        host: "db-7".into(),
        interval_ms: 2000,
        ..v1::Hello::default()
    };
    let h = hello_from_wire(&good).expect("valid");
    assert_eq!(h.host, "db-7");
    assert_eq!(h.interval, Duration::from_secs(2));
    let bad = |f: fn(&mut v1::Hello)| {
        let mut h = good.clone();
        f(&mut h);
        hello_from_wire(&h).expect_err("refused")
    };
    assert!(matches!(
        bad(|h| h.protocol = 99),
        ConvertError::Protocol { got: 99, .. }
    ));
    assert!(matches!(
        bad(|h| h.protocol = 0),
        ConvertError::Protocol { .. }
    ));
    assert!(bad(|h| h.host = "db 7".into()).to_string().contains("host"));
    assert!(bad(|h| h.host = String::new()).to_string().contains("host"));
    assert!(bad(|h| h.interval_ms = 10)
        .to_string()
        .contains("interval_ms 10"));
}

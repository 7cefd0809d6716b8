//! Input that cannot make a picture gives an error that says why.

use tcpstall_plot::{render_svg, PlotError, PlotInput};

use crate::episode::{a, b, peer_not_reading, T0};

#[test]
fn no_samples() {
    let input = PlotInput {
        samples: Vec::new(),
        ..peer_not_reading()
    };
    assert!(matches!(
        render_svg(&input, 900, 560),
        Err(PlotError::NoSamples)
    ));
}

#[test]
fn samples_without_positions() {
    let input = PlotInput {
        samples: vec![a(T0, None, None, None, Some(0)), b(T0, None, None)],
        ..peer_not_reading()
    };
    let err = render_svg(&input, 900, 560).expect_err("nothing to draw");
    assert!(matches!(err, PlotError::NoPositions), "{err}");
    assert!(err.to_string().contains("bytes_acked"), "{err}");
}

#[test]
fn sizes_out_of_range() {
    let input = peer_not_reading();
    for (w, h) in [(0, 0), (399, 560), (900, 299), (9000, 560)] {
        let err = render_svg(&input, w, h).expect_err("out of range");
        assert!(
            matches!(err, PlotError::Size { width, height } if (width, height) == (w, h)),
            "{err}"
        );
    }
    assert!(render_svg(&input, 400, 300).is_ok());
    assert!(render_svg(&input, 8192, 8192).is_ok());
}

#[test]
fn ending_before_starting() {
    let mut input = peer_not_reading();
    input.ended_at_ms = Some(input.started_at_ms - 1);
    assert!(matches!(
        render_svg(&input, 900, 560),
        Err(PlotError::EndsBeforeStart { .. })
    ));
}

#[test]
fn extreme_numbers_give_a_picture_not_a_panic() {
    let input = PlotInput {
        samples: vec![
            a(
                i64::MIN,
                Some(0),
                Some(u64::MAX),
                Some(u64::MAX),
                Some(u32::MAX),
            ),
            b(i64::MAX, Some(u64::MAX), Some(0)),
        ],
        started_at_ms: i64::MIN,
        ended_at_ms: Some(i64::MAX),
        ..peer_not_reading()
    };
    let svg = render_svg(&input, 400, 300).expect("renders");
    assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    crate::svg_doc::parse(&svg);
}

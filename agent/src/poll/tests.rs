//! Unit tests of `poll` (its phases).

use super::phases::{exact_pays, EXACT_MIN};

#[test]
fn exact_requests_pay_for_few_sockets() {
    assert!(exact_pays(0, 0));
    assert!(exact_pays(EXACT_MIN, 10));
    assert!(!exact_pays(EXACT_MIN + 1, 10));
    assert!(exact_pays(2500, 10_000));
    assert!(!exact_pays(2501, 10_000));
}

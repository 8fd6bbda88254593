use aws_sdk_s3::primitives::DateTimeFormat as Format;

use super::*;

#[test]
fn every_retain_until_can_be_sent() {
    // The SDK writes the header as an ISO date: past year 9999 it
    // cannot, and the request fails before it is sent.
    for secs in [0, 1_800_000_000, super::super::LATEST_RETAIN_UNTIL, u64::MAX] {
        let text = to_datetime(secs).fmt(Format::DateTime).unwrap_or_else(|e| panic!("{secs}: {e}"));
        assert!(text.len() <= 20, "{text}");
    }
    assert_eq!(to_datetime(u64::MAX).fmt(Format::DateTime).unwrap(), "9999-12-31T23:59:59Z");
    assert_eq!(from_datetime(&to_datetime(1_800_000_000)), 1_800_000_000);
}

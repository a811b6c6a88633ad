//! Carving new ranges out of the un-planned tail of a partition.

use crate::range::{Offset, OffsetRange};

/// Carves `[frontier, high_watermark)` into consecutive ranges of `range_size` offsets.
///
/// - At most `max_ranges` ranges are returned, so one planner tick stays a short transaction even when a
///   partition is millions of offsets behind.
/// - A tail shorter than `range_size` is carved only when `allow_partial` is set: the planner sets it once
///   the tail has waited long enough, so a quiet topic still flows without carving one-message ranges on
///   a busy one.
///
/// The ranges tile `[frontier, last.end)` exactly, which is what keeps the store free of gaps and overlaps.
pub fn carve(
    frontier: Offset,
    high_watermark: Offset,
    range_size: u32,
    max_ranges: usize,
    allow_partial: bool,
) -> Vec<OffsetRange> {
    let size = Offset::from(range_size.max(1));
    let mut ranges = Vec::new();
    let mut start = frontier.max(0);
    while start < high_watermark && ranges.len() < max_ranges {
        let end = start.saturating_add(size);
        let end = if end <= high_watermark {
            end
        } else if allow_partial {
            high_watermark
        } else {
            break;
        };
        // start < end by construction.
        if let Ok(range) = OffsetRange::new(start, end) {
            ranges.push(range);
        }
        start = end;
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn carves_full_ranges_and_holds_back_a_young_tail() {
        let ranges = carve(0, 250, 100, 10, false);
        assert_eq!(
            ranges
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect::<Vec<_>>(),
            vec![(0, 100), (100, 200)]
        );
        let ranges = carve(0, 250, 100, 10, true);
        assert_eq!(
            ranges.last().map(|r| (r.start(), r.end())),
            Some((200, 250))
        );
    }

    #[test]
    fn nothing_to_carve_at_or_past_the_high_watermark() {
        assert!(carve(100, 100, 10, 10, true).is_empty());
        assert!(carve(120, 100, 10, 10, true).is_empty());
    }

    proptest! {
        #[test]
        fn ranges_tile_from_the_frontier(frontier in 0i64..10_000, len in 0i64..10_000, size in 1u32..500,
                                         max in 0usize..50, partial: bool) {
            let hw = frontier + len;
            let ranges = carve(frontier, hw, size, max, partial);
            prop_assert!(ranges.len() <= max);
            let mut expected_start = frontier;
            for r in &ranges {
                prop_assert_eq!(r.start(), expected_start);
                prop_assert!(r.end() <= hw);
                prop_assert!(r.len() <= u64::from(size));
                prop_assert!(partial || r.len() == u64::from(size));
                expected_start = r.end();
            }
            // Nothing carvable is left behind unless the cap or the partial rule stopped us.
            if ranges.len() < max {
                let left = hw - expected_start;
                prop_assert!(left == 0 || (!partial && left < i64::from(size)));
            }
        }
    }
}

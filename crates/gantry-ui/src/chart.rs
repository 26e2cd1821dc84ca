//! The geometry of the UI's small inline SVG line charts (the environments' verification charts
//! and the reports' coverage trend): points evenly spaced left to right, values scaled between a
//! low (bottom) and a high (top), and coordinates as SVG text. Pure, so that it is unit-tested.

/// Where a chart draws its points inside the SVG, in pixels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Area {
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

impl Area {
    /// The area of a `w` by `h` chart inside a margin of `pad` on every side.
    pub(crate) fn inside(w: f64, h: f64, pad: f64) -> Area {
        Area {
            left: pad,
            right: w - pad,
            top: pad,
            bottom: h - pad,
        }
    }

    /// The `x` of the `i`th of `n` points: left to right, evenly; a lone point in the middle.
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn x(&self, i: usize, n: usize) -> f64 {
        if n < 2 {
            (self.left + self.right) / 2.0
        } else {
            self.left + i as f64 * (self.right - self.left) / (n - 1) as f64
        }
    }

    /// The `y` of `v` on a scale from `lo` (the bottom) to `hi` (the top).
    pub(crate) fn y(&self, v: f64, (lo, hi): (f64, f64)) -> f64 {
        self.top + (hi - v) / (hi - lo) * (self.bottom - self.top)
    }
}

/// The lowest and highest of `values` (the finite ones); one value only (or none) gets one unit
/// either side, so that it sits in the middle.
pub(crate) fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        (lo, hi) = (0.0, 0.0);
    }
    if lo >= hi {
        lo -= 1.0;
        hi += 1.0;
    }
    (lo, hi)
}

/// A coordinate as SVG text: one decimal.
pub(crate) fn at(v: f64) -> String {
    format!("{v:.1}")
}

/// The `points` of a polyline through `points`.
pub(crate) fn polyline(points: impl IntoIterator<Item = (f64, f64)>) -> String {
    points
        .into_iter()
        .map(|(x, y)| format!("{},{}", at(x), at(y)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value as text: up to four decimals, no trailing zeros.
pub(crate) fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_spread_evenly_and_scale_upwards() {
        let a = Area::inside(100.0, 50.0, 5.0);
        assert_eq!([a.x(0, 3), a.x(1, 3), a.x(2, 3)], [5.0, 50.0, 95.0]);
        assert_eq!(a.x(0, 1), 50.0);
        assert_eq!([a.y(0.0, (0.0, 4.0)), a.y(4.0, (0.0, 4.0))], [45.0, 5.0]);
        assert_eq!(a.y(1.0, (0.0, 4.0)), 35.0);
    }

    #[test]
    fn spans_widen_a_lone_value() {
        assert_eq!(span([3.0, f64::NAN, 1.0, 2.0]), (1.0, 3.0));
        assert_eq!(span([2.0]), (1.0, 3.0));
        assert_eq!(span([]), (-1.0, 1.0));
    }

    #[test]
    fn coordinates_and_numbers_as_text() {
        assert_eq!(polyline([(1.0, 2.26), (3.04, 4.0)]), "1.0,2.3 3.0,4.0");
        assert_eq!(num(0.1 + 0.2), "0.3");
        assert_eq!(num(81.25), "81.25");
        assert_eq!(num(-0.00001), "0");
        assert_eq!(num(200.0), "200");
    }
}

//! The promotion gate: new bundles are promoted when neither the captioner's exact match nor
//! the filter's ROC-AUC on the held-out split is lower than the current bundles' by more than
//! the tolerance. A missing figure is an error, never a 0.

use super::record::Metrics;

/// The figure the gate compares for the captioner.
pub const CAPTIONER_FIGURE: &str = "exact_match";
/// The figure the gate compares for the filter.
pub const FILTER_FIGURE: &str = "auc";

/// The gate's decision with the figures it compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Promote the new bundles.
    pub promoted: bool,
    /// Current and new captioner exact match.
    pub captioner: (f64, f64),
    /// Current and new filter ROC-AUC.
    pub filter: (f64, f64),
}

/// A figure the gate needs is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the promotion gate needs the {which} bundle's '{figure}' on the eval split, and it is missing: check the trainer's evaluation output"
)]
pub struct MissingFigure {
    /// Which bundle (`current captioner`, `new filter`, ...).
    pub which: &'static str,
    /// The figure's name.
    pub figure: &'static str,
}

fn figure(m: &Metrics, which: &'static str, figure: &'static str) -> Result<f64, MissingFigure> {
    m.get(figure)
        .copied()
        .filter(|v| v.is_finite())
        .ok_or(MissingFigure { which, figure })
}

/// Applies the gate.
pub fn decide(
    current: (&Metrics, &Metrics),
    new: (&Metrics, &Metrics),
    tolerance: f64,
) -> Result<Decision, MissingFigure> {
    let captioner = (
        figure(current.0, "current captioner", CAPTIONER_FIGURE)?,
        figure(new.0, "new captioner", CAPTIONER_FIGURE)?,
    );
    let filter = (
        figure(current.1, "current filter", FILTER_FIGURE)?,
        figure(new.1, "new filter", FILTER_FIGURE)?,
    );
    let promoted = captioner.1 >= captioner.0 - tolerance && filter.1 >= filter.0 - tolerance;
    Ok(Decision {
        promoted,
        captioner,
        filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(k: &str, v: f64) -> Metrics {
        [(k.to_string(), v)].into_iter().collect()
    }

    #[test]
    fn promotes_within_tolerance_and_refuses_beyond_it() {
        let (c0, f0) = (m("exact_match", 0.5), m("auc", 0.9));
        let ok =
            decide((&c0, &f0), (&m("exact_match", 0.49), &m("auc", 0.95)), 0.02).expect("figures");
        assert!(ok.promoted);
        assert_eq!(ok.captioner, (0.5, 0.49));
        let worse =
            decide((&c0, &f0), (&m("exact_match", 0.6), &m("auc", 0.87)), 0.02).expect("figures");
        assert!(!worse.promoted, "the filter fell by 0.03");
    }

    #[test]
    fn a_missing_or_nan_figure_is_an_error_not_a_zero() {
        let (c0, f0) = (m("exact_match", 0.5), m("auc", 0.9));
        let err = decide((&c0, &f0), (&m("exact_match", 0.6), &Metrics::new()), 1.0)
            .expect_err("missing");
        assert_eq!(err.which, "new filter");
        let err = decide((&m("exact_match", f64::NAN), &f0), (&c0, &f0), 1.0).expect_err("nan");
        assert_eq!(err.which, "current captioner");
    }
}

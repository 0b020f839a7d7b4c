//! How well a model does on a training dataset's test split.

use quiver_catalog::ModelTask;

/// The metrics of `task` for predictions against the true labels (0/1 for classification, where
/// predictions are probabilities of 1), by name, in the order listings show them.
pub(crate) fn evaluate(task: ModelTask, labels: &[f64], predictions: &[f64]) -> Vec<(String, f64)> {
    let truth = labels.to_vec();
    match task {
        ModelTask::Regression => {
            let predicted = predictions.to_vec();
            vec![
                (
                    "rmse".into(),
                    smartcore::metrics::mean_squared_error(&truth, &predicted).sqrt(),
                ),
                (
                    "mae".into(),
                    smartcore::metrics::mean_absolute_error(&truth, &predicted),
                ),
                ("r2".into(), smartcore::metrics::r2(&truth, &predicted)),
            ]
        }
        ModelTask::BinaryClassification => {
            let decided: Vec<f64> = predictions
                .iter()
                .map(|p| if *p >= 0.5 { 1.0 } else { 0.0 })
                .collect();
            let correct = decided.iter().zip(labels).filter(|(d, y)| d == y).count();
            let mut metrics = vec![
                (
                    "accuracy".into(),
                    correct as f64 / labels.len().max(1) as f64,
                ),
                (
                    "precision".into(),
                    smartcore::metrics::precision(&truth, &decided),
                ),
                (
                    "recall".into(),
                    smartcore::metrics::recall(&truth, &decided),
                ),
            ];
            // AUC needs both classes among the labels.
            if labels.contains(&0.0) && labels.contains(&1.0) {
                metrics.push((
                    "roc_auc".into(),
                    smartcore::metrics::roc_auc_score(&truth, &predictions.to_vec()),
                ));
            }
            metrics.push(("log_loss".into(), log_loss(labels, predictions)));
            metrics
        }
    }
}

/// Whether metrics `b` beat metrics `a`, as tune_model picks its best trial: by ROC AUC for
/// classification, ties broken by the lower log loss; by the lower RMSE for regression. A trial
/// without the metric (AUC of a test split with one class) never wins over one with it.
pub(crate) fn better(task: ModelTask, a: &[(String, f64)], b: &[(String, f64)]) -> bool {
    let get = |metrics: &[(String, f64)], name: &str| {
        metrics
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
            .filter(|v| !v.is_nan())
    };
    match task {
        ModelTask::Regression => match (get(a, "rmse"), get(b, "rmse")) {
            (Some(a), Some(b)) => b < a,
            (None, Some(_)) => true,
            _ => false,
        },
        ModelTask::BinaryClassification => match (get(a, "roc_auc"), get(b, "roc_auc")) {
            (Some(x), Some(y)) if x != y => y > x,
            (None, Some(_)) => true,
            (Some(_), None) => false,
            _ => matches!(
                (get(a, "log_loss"), get(b, "log_loss")),
                (Some(x), Some(y)) if y < x
            ),
        },
    }
}

/// Metrics as a JSON object, by name, as train_model and the listings show them.
pub(crate) fn metrics_json(metrics: &[(String, f64)]) -> String {
    let object: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .map(|(name, value)| (name.clone(), serde_json::Value::from(*value)))
        .collect();
    serde_json::Value::Object(object).to_string()
}

/// Mean cross-entropy, with probabilities clipped away from 0 and 1 as scikit-learn does.
fn log_loss(labels: &[f64], probabilities: &[f64]) -> f64 {
    const EPSILON: f64 = 1e-15;
    let total: f64 = labels
        .iter()
        .zip(probabilities)
        .map(|(y, p)| {
            let p = p.clamp(EPSILON, 1.0 - EPSILON);
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    total / labels.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
        metrics.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[test]
    fn classification_metrics_match_their_definitions() {
        let labels = [1.0, 1.0, 0.0, 0.0];
        let predictions = [0.9, 0.4, 0.2, 0.6];
        let metrics = evaluate(ModelTask::BinaryClassification, &labels, &predictions);
        assert_eq!(metric(&metrics, "accuracy"), 0.5);
        assert_eq!(metric(&metrics, "precision"), 0.5);
        assert_eq!(metric(&metrics, "recall"), 0.5);
        // Pairs (positive, negative) ranked right: (0.9, 0.2), (0.9, 0.6), (0.4, 0.2) of four.
        assert_eq!(metric(&metrics, "roc_auc"), 0.75);
        let expected = -((0.9f64).ln() + (0.4f64).ln() + (0.8f64).ln() + (0.4f64).ln()) / 4.0;
        assert!((metric(&metrics, "log_loss") - expected).abs() < 1e-12);
    }

    #[test]
    fn the_best_trial_is_chosen_by_auc_then_log_loss_or_by_rmse() {
        let m = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
            pairs.iter().map(|(n, v)| (n.to_string(), *v)).collect()
        };
        let c = ModelTask::BinaryClassification;
        assert!(better(c, &m(&[("roc_auc", 0.8)]), &m(&[("roc_auc", 0.9)])));
        assert!(!better(c, &m(&[("roc_auc", 0.9)]), &m(&[("roc_auc", 0.8)])));
        assert!(better(
            c,
            &m(&[("roc_auc", 1.0), ("log_loss", 0.2)]),
            &m(&[("roc_auc", 1.0), ("log_loss", 0.1)])
        ));
        assert!(better(c, &m(&[("log_loss", 0.1)]), &m(&[("roc_auc", 0.6)])));
        let r = ModelTask::Regression;
        assert!(better(r, &m(&[("rmse", 2.0)]), &m(&[("rmse", 1.0)])));
        assert!(!better(r, &m(&[("rmse", 1.0)]), &m(&[("rmse", 1.0)])));
    }

    #[test]
    fn regression_metrics_match_their_definitions() {
        let metrics = evaluate(ModelTask::Regression, &[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]);
        assert!((metric(&metrics, "rmse") - (4.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((metric(&metrics, "mae") - 2.0 / 3.0).abs() < 1e-12);
        assert!((metric(&metrics, "r2") - (1.0 - 4.0 / 2.0)).abs() < 1e-12);
    }
}

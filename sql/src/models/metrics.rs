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
    fn regression_metrics_match_their_definitions() {
        let metrics = evaluate(ModelTask::Regression, &[1.0, 2.0, 3.0], &[1.0, 2.0, 5.0]);
        assert!((metric(&metrics, "rmse") - (4.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((metric(&metrics, "mae") - 2.0 / 3.0).abs() < 1e-12);
        assert!((metric(&metrics, "r2") - (1.0 - 4.0 / 2.0)).abs() < 1e-12);
    }
}

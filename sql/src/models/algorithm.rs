//! The algorithms `train_model` offers, their hyperparameters, and the fitted models, over
//! smartcore. Features arrive as a row-major matrix of doubles; labels as doubles (0 or 1 for
//! classification).

use quiver_catalog::ModelTask;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use smartcore::ensemble::random_forest_regressor::{
    RandomForestRegressor, RandomForestRegressorParameters,
};
use smartcore::linalg::basic::arrays::Array;
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::linear_regression::{LinearRegression, LinearRegressionParameters};

use super::logistic;
use crate::error::{SqlError, SqlResult};

/// A training algorithm, by the name SQL uses for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    LinearRegression,
    LogisticRegression,
    RandomForestClassifier,
    RandomForestRegressor,
}

impl Algorithm {
    const ALL: [(&'static str, Algorithm); 4] = [
        ("linear_regression", Algorithm::LinearRegression),
        ("logistic_regression", Algorithm::LogisticRegression),
        (
            "random_forest_classifier",
            Algorithm::RandomForestClassifier,
        ),
        ("random_forest_regressor", Algorithm::RandomForestRegressor),
    ];

    pub(crate) fn parse(name: &str) -> SqlResult<Algorithm> {
        Algorithm::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                SqlError::InvalidParameter(format!(
                    "unknown algorithm \"{name}\" (known: {})",
                    Algorithm::ALL.map(|(n, _)| n).join(", ")
                ))
            })
    }

    pub(crate) fn sql_name(self) -> &'static str {
        Algorithm::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(n, _)| *n)
            .unwrap_or("unknown")
    }

    pub(crate) fn task(self) -> ModelTask {
        match self {
            Algorithm::LinearRegression | Algorithm::RandomForestRegressor => ModelTask::Regression,
            Algorithm::LogisticRegression | Algorithm::RandomForestClassifier => {
                ModelTask::BinaryClassification
            }
        }
    }

    /// The hyperparameters this algorithm takes, with their defaults.
    fn defaults(self) -> Map<String, Value> {
        let mut map = Map::new();
        match self {
            Algorithm::LinearRegression => {}
            Algorithm::LogisticRegression => {
                map.insert("l2".into(), Value::from(0.0));
                // As scikit-learn's lbfgs solver.
                map.insert("tol".into(), Value::from(1e-4));
                map.insert("max_iter".into(), Value::from(100));
            }
            Algorithm::RandomForestClassifier | Algorithm::RandomForestRegressor => {
                map.insert("n_trees".into(), Value::from(100));
                map.insert("max_depth".into(), Value::Null);
                map.insert("min_samples_leaf".into(), Value::from(1));
                map.insert("min_samples_split".into(), Value::from(2));
                // As scikit-learn: the square root of the feature count for classification, all
                // features for regression.
                map.insert("max_features".into(), Value::Null);
                map.insert("seed".into(), Value::from(0));
            }
        }
        map
    }
}

/// Validated hyperparameters: the given ones over the algorithm's defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Hyperparameters {
    pub algorithm: Algorithm,
    values: Map<String, Value>,
}

impl Hyperparameters {
    /// Reads the algorithm's own keys of `given`; `reserved` keys (train_model's, such as
    /// `label`) are skipped, any other key is an error.
    pub(crate) fn new(
        algorithm: Algorithm,
        given: &Map<String, Value>,
        reserved: &[&str],
    ) -> SqlResult<Hyperparameters> {
        let mut values = algorithm.defaults();
        for (key, value) in given {
            if reserved.contains(&key.as_str()) {
                continue;
            }
            if !values.contains_key(key) {
                let mut known: Vec<&str> = values.keys().map(String::as_str).collect();
                known.extend(reserved);
                return Err(SqlError::InvalidParameter(format!(
                    "{} has no parameter \"{key}\" (it takes: {})",
                    algorithm.sql_name(),
                    known.join(", ")
                )));
            }
            let valid = match key.as_str() {
                "l2" => value.as_f64().is_some_and(|v| v >= 0.0),
                "tol" => value.as_f64().is_some_and(|v| v > 0.0),
                // null: no limit, or the default rule.
                "max_depth" => {
                    value.is_null()
                        || value
                            .as_u64()
                            .is_some_and(|v| (1..=u64::from(u16::MAX)).contains(&v))
                }
                "max_features" => value.is_null() || value.as_u64().is_some_and(|v| v >= 1),
                "seed" => value.as_u64().is_some(),
                "n_trees" | "min_samples_leaf" | "max_iter" => {
                    value.as_u64().is_some_and(|v| v >= 1)
                }
                "min_samples_split" => value.as_u64().is_some_and(|v| v >= 2),
                _ => false,
            };
            if !valid {
                return Err(SqlError::InvalidParameter(format!(
                    "{} parameter \"{key}\" cannot be {value}",
                    algorithm.sql_name()
                )));
            }
            values.insert(key.clone(), value.clone());
        }
        Ok(Hyperparameters { algorithm, values })
    }

    /// As recorded: every parameter, defaults included.
    pub(crate) fn to_json(&self) -> String {
        Value::Object(self.values.clone()).to_string()
    }

    fn float(&self, key: &str) -> f64 {
        self.values.get(key).and_then(Value::as_f64).unwrap_or(0.0)
    }

    fn count(&self, key: &str) -> Option<usize> {
        self.values
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
    }
}

/// smartcore's random forest of regression trees over a matrix of doubles.
type Forest = RandomForestRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>;

/// A fitted model, as its artifact stores it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Fitted {
    /// `x . coefficients + intercept`.
    Linear {
        coefficients: Vec<f64>,
        intercept: f64,
    },
    /// The probability of the positive class, `sigmoid(x . coefficients + intercept)`.
    Logistic {
        coefficients: Vec<f64>,
        intercept: f64,
    },
    /// The mean of the trees' leaf values. A classifier's forest is fitted on 0/1 labels by
    /// variance reduction, which for two classes chooses the same splits as Gini impurity (one is
    /// twice the other), and its leaf means are the leaves' class-1 fractions: the averaged
    /// probability scikit-learn's predict_proba gives.
    Forest(Forest),
    /// The same forest, fitted in [`FOREST_PARTS`] parts on all cores: each part a forest of its
    /// share of the trees with its own seed (the forest's seed plus the part's number, so a seed
    /// gives the same trees whatever the machine), the prediction the mean over all trees. Each
    /// part sorts every feature once before growing its trees, so parts cost that sort again:
    /// one tree per part was 3x scikit-learn's time on bench/models. Models trained before are
    /// `Forest`s.
    Parts(Vec<(usize, Forest)>),
}

/// How many forests a random forest is fitted as, side by side.
const FOREST_PARTS: usize = 4;

impl Fitted {
    /// Fits on the rows of `x` and their labels; `x` is shared by the trials of a search.
    #[allow(clippy::ptr_arg)] // smartcore's labels are a Vec
    pub(crate) fn fit(
        parameters: &Hyperparameters,
        x: &DenseMatrix<f64>,
        labels: &Vec<f64>,
    ) -> SqlResult<Fitted> {
        let width = x.shape().1;
        let failed = |e: smartcore::error::Failed| {
            SqlError::Data(format!("{} failed: {e}", parameters.algorithm.sql_name()))
        };
        Ok(match parameters.algorithm {
            Algorithm::LinearRegression => {
                let model = LinearRegression::<f64, f64, DenseMatrix<f64>, Vec<f64>>::fit(
                    x,
                    labels,
                    LinearRegressionParameters::default(),
                )
                .map_err(failed)?;
                Fitted::Linear {
                    coefficients: model.coefficients().iterator(0).copied().collect(),
                    intercept: *model.intercept(),
                }
            }
            Algorithm::LogisticRegression => {
                let classes: Vec<f64> = labels
                    .iter()
                    .map(|&y| f64::from(u8::from(y > 0.5)))
                    .collect();
                let stopping = logistic::Stopping {
                    tol: parameters.float("tol"),
                    max_iter: parameters.count("max_iter").unwrap_or(100),
                };
                // `matrix` builds row-major matrices: the values in storage order are the rows.
                let (coefficients, intercept) = logistic::fit(
                    x.iter().as_slice(),
                    width,
                    &classes,
                    parameters.float("l2"),
                    stopping,
                );
                Fitted::Logistic {
                    coefficients,
                    intercept,
                }
            }
            Algorithm::RandomForestClassifier | Algorithm::RandomForestRegressor => {
                let default_features = match parameters.algorithm {
                    Algorithm::RandomForestClassifier => (width as f64).sqrt().ceil() as usize,
                    _ => width,
                };
                let mut forest = RandomForestRegressorParameters::default()
                    .with_n_trees(1)
                    .with_min_samples_leaf(parameters.count("min_samples_leaf").unwrap_or(1))
                    .with_min_samples_split(parameters.count("min_samples_split").unwrap_or(2))
                    .with_m(
                        parameters
                            .count("max_features")
                            .unwrap_or(default_features)
                            .clamp(1, width.max(1)),
                    );
                if let Some(depth) = parameters.count("max_depth") {
                    forest = forest.with_max_depth(depth as u16);
                }
                let seed = parameters.count("seed").unwrap_or(0) as u64;
                let trees = parameters.count("n_trees").unwrap_or(100);
                let parts = trees.clamp(1, FOREST_PARTS);
                let fit_part = |part: usize| {
                    let share = trees / parts + usize::from(part < trees % parts);
                    let one = forest
                        .clone()
                        .with_n_trees(share)
                        .with_seed(seed.wrapping_add(part as u64));
                    Ok((
                        share,
                        RandomForestRegressor::fit(x, labels, one).map_err(failed)?,
                    ))
                };
                Fitted::Parts(on_all_cores(parts, fit_part)?)
            }
        })
    }

    /// The prediction for each row of `features` (row-major, `width` values per row).
    pub(crate) fn predict(&self, features: &[f64], width: usize) -> SqlResult<Vec<f64>> {
        let linear = |coefficients: &[f64], intercept: f64| -> SqlResult<Vec<f64>> {
            if coefficients.len() != width {
                return Err(SqlError::Internal(format!(
                    "the model has {} coefficients for {width} features",
                    coefficients.len()
                )));
            }
            Ok(features
                .chunks_exact(width.max(1))
                .map(|row| {
                    intercept
                        + row
                            .iter()
                            .zip(coefficients)
                            .map(|(x, w)| x * w)
                            .sum::<f64>()
                })
                .collect())
        };
        match self {
            Fitted::Linear {
                coefficients,
                intercept,
            } => linear(coefficients, *intercept),
            Fitted::Logistic {
                coefficients,
                intercept,
            } => Ok(linear(coefficients, *intercept)?
                .into_iter()
                .map(|z| 1.0 / (1.0 + (-z).exp()))
                .collect()),
            Fitted::Forest(forest) => forest_mean([(1, forest)], features, width),
            Fitted::Parts(parts) => {
                forest_mean(parts.iter().map(|(n, f)| (*n, f)), features, width)
            }
        }
    }
}

/// The mean over all trees of forests given with their tree counts, for rows of `features`
/// (row-major).
fn forest_mean<'a>(
    forests: impl IntoIterator<Item = (usize, &'a Forest)>,
    features: &[f64],
    width: usize,
) -> SqlResult<Vec<f64>> {
    let rows = features.len().checked_div(width).unwrap_or(0);
    if rows == 0 {
        return Ok(Vec::new());
    }
    let x = matrix(features.to_vec(), rows, width)?;
    let mut sums = vec![0.0; rows];
    let mut trees = 0;
    for (count, forest) in forests {
        let predicted = forest
            .predict(&x)
            .map_err(|e| SqlError::Data(format!("random forest prediction failed: {e}")))?;
        for (sum, value) in sums.iter_mut().zip(predicted) {
            *sum += count as f64 * value;
        }
        trees += count;
    }
    let trees = trees.max(1) as f64;
    Ok(sums.into_iter().map(|sum| sum / trees).collect())
}

/// `work(0..count)` on as many threads as there are cores, the results in order.
fn on_all_cores<T: Send>(
    count: usize,
    work: impl Fn(usize) -> SqlResult<T> + Sync,
) -> SqlResult<Vec<T>> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(count);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let item = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if item >= count {
                            return Ok(mine);
                        }
                        mine.push((item, work(item)?));
                    }
                })
            })
            .collect();
        let mut done = Vec::with_capacity(count);
        for worker in workers {
            let finished: SqlResult<Vec<(usize, T)>> = worker
                .join()
                .unwrap_or_else(|_| Err(SqlError::Internal("a training thread panicked".into())));
            done.extend(finished?);
        }
        Ok::<_, SqlError>(done)
    })?;
    done.sort_by_key(|(item, _)| *item);
    Ok(done.into_iter().map(|(_, result)| result).collect())
}

/// A matrix of `rows` rows of `width` values, from row-major `values`.
pub(crate) fn matrix(values: Vec<f64>, rows: usize, width: usize) -> SqlResult<DenseMatrix<f64>> {
    DenseMatrix::new(rows, width, values, false)
        .map_err(|e| SqlError::Internal(format!("feature matrix: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameters(algorithm: Algorithm, json: &str) -> Hyperparameters {
        let given: Map<String, Value> = serde_json::from_str(json).unwrap();
        Hyperparameters::new(algorithm, &given, &["label"]).unwrap()
    }

    /// Rows (x0, x1) on a grid; `label` of each.
    fn data(label: impl Fn(f64, f64) -> f64) -> (Vec<f64>, Vec<f64>) {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for i in 0..20 {
            for j in 0..20 {
                let (a, b) = (i as f64 / 10.0, j as f64 / 10.0);
                features.extend([a, b]);
                labels.push(label(a, b));
            }
        }
        (features, labels)
    }

    #[test]
    fn linear_regression_recovers_the_coefficients() {
        let (x, y) = data(|a, b| 3.0 * a - 2.0 * b + 1.0);
        let model = Fitted::fit(
            &parameters(Algorithm::LinearRegression, "{}"),
            &matrix(x, y.len(), 2).unwrap(),
            &y,
        )
        .unwrap();
        let predicted = model.predict(&[1.0, 1.0, 0.0, 0.5], 2).unwrap();
        assert!((predicted[0] - 2.0).abs() < 1e-9, "{predicted:?}");
        assert!((predicted[1] - 0.0).abs() < 1e-9, "{predicted:?}");
    }

    #[test]
    fn classifiers_give_probabilities_on_the_right_side() {
        for algorithm in [
            Algorithm::LogisticRegression,
            Algorithm::RandomForestClassifier,
        ] {
            let (x, y) = data(|a, b| if a + b > 2.0 { 1.0 } else { 0.0 });
            let model = Fitted::fit(
                &parameters(algorithm, r#"{"label": "y"}"#),
                &matrix(x, y.len(), 2).unwrap(),
                &y,
            )
            .unwrap();
            let p = model.predict(&[1.9, 1.9, 0.1, 0.1], 2).unwrap();
            assert!(p[0] > 0.8 && p[1] < 0.2, "{algorithm:?}: {p:?}");
            assert!(p.iter().all(|p| (0.0..=1.0).contains(p)));
        }
    }

    #[test]
    fn a_forest_survives_its_artifact() {
        let (x, y) = data(|a, _| a * a);
        let model = Fitted::fit(
            &parameters(
                Algorithm::RandomForestRegressor,
                r#"{"n_trees": 5, "seed": 7}"#,
            ),
            &matrix(x, y.len(), 2).unwrap(),
            &y,
        )
        .unwrap();
        let text = serde_json::to_string(&model).unwrap();
        let back: Fitted = serde_json::from_str(&text).unwrap();
        let rows = [0.5, 0.5, 1.5, 0.0];
        assert_eq!(
            model.predict(&rows, 2).unwrap(),
            back.predict(&rows, 2).unwrap()
        );
    }

    #[test]
    fn a_seed_gives_the_same_forest_and_another_seed_another() {
        let (x, y) = data(|a, b| a * b);
        let fit = |seed: u32| {
            Fitted::fit(
                &parameters(
                    Algorithm::RandomForestRegressor,
                    &format!(r#"{{"n_trees": 6, "seed": {seed}}}"#),
                ),
                &matrix(x.clone(), y.len(), 2).unwrap(),
                &y,
            )
            .unwrap()
        };
        let rows = [0.5, 0.5, 1.5, 0.2, 0.9, 1.7];
        let first = fit(4).predict(&rows, 2).unwrap();
        assert_eq!(first, fit(4).predict(&rows, 2).unwrap());
        assert_ne!(first, fit(5).predict(&rows, 2).unwrap());
        let Fitted::Parts(parts) = fit(4) else {
            panic!("a forest is fitted in parts");
        };
        let shares: Vec<usize> = parts.iter().map(|(n, _)| *n).collect();
        assert_eq!(shares, [2, 2, 1, 1]);
    }

    #[test]
    fn parameters_are_checked() {
        let given = |json: &str| serde_json::from_str::<Map<String, Value>>(json).unwrap();
        let error = Hyperparameters::new(
            Algorithm::LogisticRegression,
            &given(r#"{"depth": 3}"#),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("no parameter \"depth\""), "{error}");
        assert!(
            Hyperparameters::new(
                Algorithm::RandomForestRegressor,
                &given(r#"{"n_trees": 0}"#),
                &[]
            )
            .is_err()
        );
        for bad in [r#"{"l2": -1}"#, r#"{"tol": 0}"#, r#"{"max_iter": 0}"#] {
            assert!(
                Hyperparameters::new(Algorithm::LogisticRegression, &given(bad), &[]).is_err(),
                "{bad}"
            );
        }
        let recorded = parameters(Algorithm::RandomForestClassifier, r#"{"n_trees": 3}"#).to_json();
        assert!(
            recorded.contains("\"n_trees\":3") && recorded.contains("\"seed\":0"),
            "{recorded}"
        );
        assert!(Algorithm::parse("xgboost").is_err());
        assert_eq!(
            Algorithm::parse("Logistic_Regression").unwrap(),
            Algorithm::LogisticRegression
        );
    }
}

//! Logistic regression: smartcore's L-BFGS minimising an objective evaluated here, over the
//! row-major feature matrix, on both cores.
//!
//! smartcore's own `LogisticRegression` reads the matrix element by element through its generic
//! array trait, evaluates the gradient twice per iteration, and stops only when the gradient of
//! the summed loss is under 1e-8: six times scikit-learn's training time on bench/models. The
//! objective here is the mean log loss plus `l2 / 2n * |w|^2` (the intercept is not penalised):
//! the same minimum as smartcore's summed form, and scikit-learn's with `C = 1 / l2`. It stops as
//! scikit-learn's lbfgs solver does: the gradient's largest component under `tol`, the loss no
//! longer falling (relative change under 64 machine epsilons), or `max_iter` iterations.

use std::cell::RefCell;

use smartcore::numbers::realnum::RealNumber;
use smartcore::optimization::FunctionOrder;
use smartcore::optimization::first_order::FirstOrderOptimizer;
use smartcore::optimization::first_order::lbfgs::LBFGS;
use smartcore::optimization::line_search::Backtracking;

/// How the fit is stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopping {
    pub tol: f64,
    pub max_iter: usize,
}

/// The coefficients and intercept minimising the penalised mean log loss of `labels` (0 or 1)
/// given `rows`, row-major with `width` values per row.
pub(crate) fn fit(
    rows: &[f64],
    width: usize,
    labels: &[f64],
    l2: f64,
    stopping: Stopping,
) -> (Vec<f64>, f64) {
    let objective = Objective {
        rows,
        labels,
        width,
        l2,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        last: RefCell::new(None),
    };
    let loss = |w: &Vec<f64>| objective.evaluated(w, |e| e.loss);
    let gradient = |g: &mut Vec<f64>, w: &Vec<f64>| {
        objective.evaluated(w, |e| g.copy_from_slice(&e.gradient));
    };
    let optimizer = LBFGS {
        max_iter: stopping.max_iter,
        g_atol: stopping.tol,
        f_reltol: 64.0 * f64::EPSILON,
        ..LBFGS::default()
    };
    let line_search = Backtracking {
        order: FunctionOrder::THIRD,
        ..Backtracking::default()
    };
    let mut solution = optimizer
        .optimize(&loss, &gradient, &vec![0.0; width + 1], &line_search)
        .x;
    let intercept = solution.pop().unwrap_or(0.0);
    (solution, intercept)
}

struct Objective<'a> {
    rows: &'a [f64],
    labels: &'a [f64],
    width: usize,
    l2: f64,
    threads: usize,
    /// The last point evaluated: L-BFGS asks for the loss and the gradient at the same point
    /// separately, and for the gradient at its current point twice.
    last: RefCell<Option<Evaluation>>,
}

struct Evaluation {
    at: Vec<f64>,
    loss: f64,
    /// The coefficients' components, then the intercept's.
    gradient: Vec<f64>,
}

impl Objective<'_> {
    fn evaluated<T>(&self, w: &[f64], read: impl FnOnce(&Evaluation) -> T) -> T {
        let mut last = self.last.borrow_mut();
        match last.as_ref() {
            Some(evaluation) if evaluation.at == w => read(evaluation),
            _ => read(last.insert(self.evaluate(w))),
        }
    }

    /// The loss and gradient at `w` (coefficients, then intercept), rows split across threads.
    fn evaluate(&self, w: &[f64]) -> Evaluation {
        let width = self.width;
        let count = self.labels.len();
        let per_thread = count.div_ceil(self.threads.max(1)).max(1);
        let partials: Vec<(f64, Vec<f64>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .rows
                .chunks(per_thread * width.max(1))
                .zip(self.labels.chunks(per_thread))
                .map(|(rows, labels)| scope.spawn(move || partial_sums(rows, labels, w, width)))
                .collect();
            workers
                .into_iter()
                // A worker's panic (a bug) goes on to the training task, which reports it as an
                // error, rather than becoming a NaN loss that would be fitted into a model.
                .map(|worker| {
                    worker
                        .join()
                        .unwrap_or_else(|p| std::panic::resume_unwind(p))
                })
                .collect()
        });
        let scale = 1.0 / count.max(1) as f64;
        let mut loss = 0.0;
        let mut gradient = vec![0.0; width + 1];
        for (partial_loss, partial_gradient) in partials {
            loss += partial_loss;
            for (total, part) in gradient.iter_mut().zip(&partial_gradient) {
                *total += part;
            }
        }
        let penalty = self.l2 * scale;
        let coefficients = &w[..width];
        loss = loss * scale + 0.5 * penalty * dot(coefficients, coefficients);
        for (g, w) in gradient.iter_mut().zip(coefficients) {
            *g = *g * scale + penalty * w;
        }
        gradient[width] *= scale;
        Evaluation {
            at: w.to_vec(),
            loss,
            gradient,
        }
    }
}

/// The summed log loss of these rows and its gradient (coefficients, then intercept).
fn partial_sums(rows: &[f64], labels: &[f64], w: &[f64], width: usize) -> (f64, Vec<f64>) {
    let (coefficients, intercept) = (&w[..width], w[width]);
    let mut loss = 0.0;
    let mut gradient = vec![0.0; width + 1];
    for (row, &label) in rows.chunks_exact(width.max(1)).zip(labels) {
        let z = intercept + dot(row, coefficients);
        loss += z.ln_1pe() - label * z;
        let residual = z.sigmoid() - label;
        for (g, x) in gradient[..width].iter_mut().zip(row) {
            *g += residual * x;
        }
        gradient[width] += residual;
    }
    (loss, gradient)
}

/// `a . b`, in four running sums so the compiler can keep them in vector registers.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut sums = [0.0; 4];
    let (a_chunks, b_chunks) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..4 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dot_product_counts_every_element() {
        let a: Vec<f64> = (1..=7).map(f64::from).collect();
        let b = vec![2.0; 7];
        assert_eq!(dot(&a, &b), 56.0);
    }

    #[test]
    fn the_gradient_is_the_loss_s_slope() {
        let rows = [0.5, -1.0, 2.0, 0.1, -0.3, 0.7, 1.5, 1.5, -2.0];
        let labels = [1.0, 0.0, 1.0];
        let objective = Objective {
            rows: &rows,
            labels: &labels,
            width: 3,
            l2: 0.4,
            threads: 2,
            last: RefCell::new(None),
        };
        let w = [0.3, -0.2, 0.1, 0.05];
        let at = objective.evaluate(&w);
        for i in 0..w.len() {
            let (mut up, mut down) = (w, w);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let slope = (objective.evaluate(&up).loss - objective.evaluate(&down).loss) / 2e-6;
            assert!((slope - at.gradient[i]).abs() < 1e-6, "component {i}");
        }
    }

    #[test]
    fn separable_classes_are_told_apart() {
        // The label is 1 when x0 + x1 > 1.
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        for i in 0..400 {
            let (a, b) = ((i % 20) as f64 / 20.0, (i / 20) as f64 / 20.0);
            rows.extend([a, b]);
            labels.push(f64::from(u8::from(a + b > 1.0)));
        }
        let stopping = Stopping {
            tol: 1e-4,
            max_iter: 100,
        };
        let (coefficients, intercept) = fit(&rows, 2, &labels, 0.01, stopping);
        let right = rows
            .chunks(2)
            .zip(&labels)
            .filter(|(row, label)| {
                let z = intercept + row[0] * coefficients[0] + row[1] * coefficients[1];
                (z > 0.0) == (**label > 0.5)
            })
            .count();
        assert!(right >= 390, "{right} of 400");
    }
}

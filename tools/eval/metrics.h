/* metrics.h -- sample-quality measures beside FID: KID, precision and recall,
 * class coverage, and the bootstrap resamples their confidence intervals
 * come from.
 *
 * KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD
 * between the sample and reference features under the cubic polynomial
 * kernel k(x, y) = (x.y / s + 1)^3. The standard KID has s = d for features
 * of about unit scale; our judges' features are not (ReLU features of the
 * conv judge run to tens), so s is the reference features' mean squared
 * norm, which makes x.y / s about 1 for two typical points under any judge.
 * Unbiased at any n, so small sets compare fairly (FID is biased upwards at
 * small n).
 *
 * Precision and recall (Kynkaanniemi et al. 2019): each set's manifold is
 * the union of balls around its points, each reaching to the point's k-th
 * nearest neighbour in the same set (k = METRIC_PR_K). Precision is the
 * share of samples inside the reference manifold (are samples realistic?),
 * recall the share of reference points inside the sample manifold (is the
 * data covered?). Both sets should have the same size.
 *
 * Bootstrap: a resample is a vector of counts (how often each of n items is
 * drawn in n draws with replacement), a pure function of (seed, replicate),
 * so every row measured with the same run seed gets the same resamples:
 * differences between rows are paired. */
#ifndef DDM_EVAL_METRICS_H
#define DDM_EVAL_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define METRIC_PR_K 3

/* counts [n] of bootstrap replicate b of seed (sums to n). */
void metric_boot_counts(uint64_t seed, int b, long n, int *counts);

/* Kernel sums for KID of one sample set against a fixed reference. */
typedef struct kid_set {
    long n;
    double *kgg;     /* [n][n] k(x_i, x_j) */
    double *kgr;     /* [n] sum over the reference of k(x_i, r) */
    long m;          /* reference size */
    double rr;       /* mean k(r_a, r_b) over a != b */
} kid_set;

/* The kernel scale s of a reference set ref [m][d]: its mean squared norm. */
double kid_scale(const float *ref, long m, int d);
/* Reference term of KID for ref [m][d] (m >= 2): the mean of k over pairs. */
double kid_ref_term(const float *ref, long m, int d, double scale);
/* Fills *out for samples x [n][d] (n >= 2) against ref [m][d] whose
 * kid_ref_term is rr, kernel scale scale. Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int kid_set_init(const float *x, long n, const float *ref, long m, int d, double scale,
                 double rr, kid_set *out);
void kid_set_free(kid_set *s);
/* KID of the set with row i counted counts[i] times (NULL = once each). */
double kid_set_value(const kid_set *s, const int *counts);

/* k-NN radii [m] of the points pts [m][d] within their own set (the k-th
 * smallest distance to another point; m > k). Returns 0, DDM_EINVAL or DDM_ENOMEM. */
int pr_radii(const float *pts, long m, int d, int k, double *radius);
/* in[i] = 1 if point a_i [na][d] lies within the manifold of b [nb][d] with
 * radii rb [nb] (some |a_i - b_j| <= rb_j), else 0. Returns 0 or DDM_ENOMEM. */
int pr_inside(const float *a, long na, const float *b, const double *rb, long nb, int d,
              unsigned char *in);
/* Mean of in [n] with item i counted counts[i] times (NULL = once each). */
double pr_share(const unsigned char *in, long n, const int *counts);

/* Total-variation distance 1/2 sum_c |hist_c / sum(hist) - freq_c| between
 * class counts hist [C] and frequencies freq [C] (summing to 1); NAN for an
 * empty histogram. */
double metric_tv(const double *hist, const double *freq, int C);

/* Mean and standard deviation of v [n] (sd NAN for n < 2). */
void metric_mean_sd(const double *v, int n, double *mean, double *sd);

#endif

/* Accuracy bookkeeping shared by the probes: top-1 / top-5 counts over a
 * score matrix, as src/utils.py's accuracy() computes them (a sample is
 * correct at k when its label is among the k highest scores).  Ties are
 * resolved in the label's favour (classes scoring strictly higher count
 * against it), which torch.topk leaves unspecified. */
#ifndef SWAV_EVALUATOR_METRICS_H
#define SWAV_EVALUATOR_METRICS_H

#include <stdbool.h>
#include <stdint.h>

struct eval_acc {
    int64_t n;        /* samples seen */
    int64_t correct1; /* label ranked first */
    int64_t correct5; /* label among the first five */
};

/* Rank of scores[label] among scores[0..n_classes): the number of classes
 * scoring strictly higher (0 = top-1). */
int eval_label_rank(const float *scores, int n_classes, int label);
/* Adds one sample with the given rank. */
void eval_acc_add(struct eval_acc *a, int rank);
/* Percentages (0..100); 0 when n == 0. */
double eval_acc_top1(const struct eval_acc *a);
double eval_acc_top5(const struct eval_acc *a);

#endif

/* The run's report: <dump_path>/report.html, one self-contained page (inline
 * SVG and CSS, no script, no external asset) with
 *   - the training loss and learning rate against the step, epoch starts
 *     marked (from <dump_path>/train.jsonl: {"epoch", "step", "loss", "lr"}
 *     per line, written by the trainer),
 *   - for each probe, top-1 / top-5 against the checkpoint's epoch, the
 *     random-init baseline (results with "baseline": true) as a horizontal
 *     line (from <dump_path>/eval.jsonl, see results.h),
 *   - a table of all results and the run's configuration (a JSON object).
 * Lines that do not parse are skipped and counted on the page.  The page is
 * replaced atomically (common/fileio.h). */
#ifndef SWAV_EVALUATOR_REPORT_H
#define SWAV_EVALUATOR_REPORT_H

#include <stddef.h>

/* config_json: the run configuration as a JSON object text; NULL reads
 * <dump_path>/config.json when it exists.  0, or -1 with a message. */
int eval_report_write(const char *dump_path, const char *config_json, char *err, size_t errlen);

/* The page as a malloc'd NUL-terminated string (what eval_report_write
 * writes), for tests and for serving. */
int eval_report_render(const char *dump_path, const char *config_json, char **html,
                       size_t *len, char *err, size_t errlen);

#endif

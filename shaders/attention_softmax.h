// The softmax of attention rows as every attention kernel evaluates it (forward, backward and the split-KV
// combine): the stats a row keeps and the probabilities recomputed from them.
#pragma once

// Fast math (PYTORCH_MPS_FAST_MATH=1) lets the compiler assume that no value is infinite or NaN, and fold comparisons
// with them. So the kernels compare with no infinity: whether a row may attend a key is a flag, a key it may not
// attend has the finite score MFA_MASKED_SCORE, and a row that attended nothing is told by its sum 0. The infinities
// that are data (a -inf float mask entry, the stats (-inf, 0) of such a row) are read and written as bits.
constant constexpr float MFA_MASKED_SCORE = -FLT_MAX;  // no finite score is lower, so max() ignores it
constant constexpr uint MFA_MINUS_INFINITY_BITS = 0xff800000u;

// The softmax of a row is kept as (max, sum): its largest score m and the sum l of exp(score - m) (natural units).
// The forward writes them; the backward recomputes each probability with the forward's expressions below from the
// same scores, so the two agree at any score magnitude (a log-sum-exp m + log l in float is rounded by |m| x 2^-24,
// and exp(score - lse) would carry that error into every probability of the row).

// exp(score - shift) as the forward's online softmax evaluates it: only the difference goes to base 2.
inline float attention_exp(float score, float shift) { return metal::exp2((score - shift) * M_LOG2E_F); }

// 1 / l, and 0 for rows that attend nothing (l = 0) or whose scores hold a NaN (l NaN).
inline float attention_inverse_sum(float sum) { return sum > 0.0f ? 1.0f / sum : 0.0f; }

// The stats a row writes: (max, sum), or (-inf, 0) for a row that attended nothing or whose scores held a NaN (sum
// not > 0; the op's contract, README "stats"). Selected as bits: fast math may drop the infinite arm of a float select.
inline float2 attention_stats(float row_max, float row_sum) {
  const uint2 no_key = uint2(MFA_MINUS_INFINITY_BITS, 0u);
  return as_type<float2>(row_sum > 0.0f ? as_type<uint2>(float2(row_max, row_sum)) : no_key);
}

// A row's stats as the backward reads them: (max, 1 / sum), and (0, 0) for rows with sum 0 (their max is -inf), so no
// infinity enters the arithmetic.
inline float2 attention_row_softmax(float2 stats) {
  return stats.y > 0.0f ? float2(stats.x, 1.0f / stats.y) : float2(0.0f);
}

// Softmax probability of a score given its row's (max, 1 / sum); 0 for keys the row may not attend and rows that
// attend nothing.
inline float attention_probability(float score, bool allowed, float2 row_softmax) {
  return !allowed || row_softmax.y == 0.0f ? 0.0f : attention_exp(score, row_softmax.x) * row_softmax.y;
}

// Adds the logit `sink` to a row's (max, sum) as one more key with no value: returns the factor by which the row's
// unnormalised output must be rescaled (0 for a row that had attended nothing).
inline float attention_add_sink(thread float& row_max, thread float& row_sum, float sink) {
  const float new_max = max(row_max, sink);
  const float correction = row_sum > 0.0f ? attention_exp(row_max, new_max) : 0.0f;
  row_sum = row_sum * correction + attention_exp(sink, new_max);
  row_max = new_max;
  return correction;
}

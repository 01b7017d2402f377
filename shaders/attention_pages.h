// Paged K/V caches (MFA_PAGED_KV, forward only): k and v are pools of pages (pages, Hk, page_size, D), and each
// sequence's keys are found through its row of the block table. Key j of sequence b is the cache position
// first + j, (first, count) = kv_spans[b], at row position % page_size of page block_table[b][position / page_size].
// A contiguous cache is the same with one page per sequence (page_size = its capacity).
#pragma once
#include "attention_scores.h"

// The sequence's queries as attention_sequence gives them, and its keys from kv_spans.
inline AttentionSequence attention_paged_sequence(constant AttentionParams& p, uint seq, device const int* cu_q,
                                                  device const int* kv_spans) {
  AttentionSequence s = attention_sequence(p, seq, cu_q, cu_q);
  s.k_first = kv_spans[2 * seq];
  s.kv_len = kv_spans[2 * seq + 1];
  s.offset = p.bottom_right ? s.kv_len - s.q_len : 0;
  return s;
}

// The rows of one K/V head of a sequence, found through its pages (a row source for mfa_copy_rows). A copy's thread
// visits its rows in order, so it keeps the last page it looked up: one block-table read per page it enters, not per
// access.
template <typename T>
struct attention_paged_rows {
  device const T* head;      // the head's row 0 in page 0 (plus the caller's column offset)
  long page_stride, row_stride;
  device const int* pages;   // the sequence's row of the block table
  int first, page_size;      // the sequence's first cache position; rows per page
  int looked_up = -1;        // the block-table entry last read (-1: none yet), and its page's offset
  long page_offset = 0;
  device const T* row(int key) {
    const int position = first + key, entry = position / page_size;
    if (entry != looked_up) {
      looked_up = entry;
      page_offset = long(pages[entry]) * page_stride;
    }
    return head + page_offset + long(position - entry * page_size) * row_stride;
  }
  attention_paged_rows starting_at(int key) const {  // keys key, key + 1, ...
    attention_paged_rows rows = *this;
    rows.first += key;
    rows.looked_up = -1;
    return rows;
  }
  attention_paged_rows from_column(uint c) const {  // the same keys from column c on
    attention_paged_rows rows = *this;
    rows.head += c;
    return rows;
  }
};

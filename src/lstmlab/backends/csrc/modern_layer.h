// The modern cells' layer, forward and backward (modern_layer.cpp documents the arguments
// and results).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "modern.h"

namespace lstmlab {

std::vector<at::Tensor> modern_forward(int64_t kind, int64_t act, int64_t fexp, at::Tensor x, at::Tensor h0,
                                       at::Tensor c0, at::Tensor nm0, at::Tensor W_ih, at::Tensor b_ih,
                                       at::Tensor W_hh, at::Tensor b_hh, at::Tensor lengths, bool keep,
                                       int64_t small_limit, bool allow_pack, int64_t groups, int64_t workers,
                                       std::vector<int64_t> edges);

std::vector<at::Tensor> modern_backward(int64_t kind, int64_t act, int64_t fexp, bool truncate, at::Tensor x,
                                        at::Tensor h0, at::Tensor W_ih, at::Tensor W_hh, at::Tensor lengths,
                                        at::Tensor out, at::Tensor K, at::Tensor S, at::Tensor dout,
                                        at::Tensor dh_n, at::Tensor dc_n, at::Tensor da_n, bool want_norms,
                                        int64_t small_limit, bool allow_pack, int64_t groups, int64_t workers,
                                        std::vector<int64_t> edges);

}  // namespace lstmlab

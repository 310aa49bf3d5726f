// The 1997 machine's fast engine (lstmlab.train.net1997): one net of memory blocks, batch
// 1, double precision, trained online with the paper's truncated gradient computed forward
// in time. The maths and the weight layout are those of net1997.py's module docstring and
// `reference_step`; this file computes the same gradient without storing anything over time:
//
//   for every cell c of block j and every source k of z_t (the eligibility traces)
//     dS_c/dw_c,k   <- phi_j dS_c/dw_c,k   + in_j g'(net_c) z_k        (cell input weights)
//     dS_c/dw_in,k  <- phi_j dS_c/dw_in,k  + g_c in_j(1-in_j) z_k      (block's input gate)
//     dS_c/dw_phi,k <- phi_j dS_c/dw_phi,k + s_c(t-1) phi_j(1-phi_j) z_k (block's forget gate)
//
// and at a step with targets, with delta_k = (y_k - target_k) f'(net_k):
//   dE/dW_out[k, :] += delta_k zo;  e_c = sum_k delta_k W_out[k, c]  (likewise hidden units)
//   dE/dW_hid[out_j, :] += (sum_{c in j} e_c h(s_c)) out_j(1-out_j) z       (local: t-1 detached)
//   dE/dW_hid[hidden u, :] += e_u hid_u(1-hid_u) z
//   dE/ds_c = e_c out_j h'(s_c);  dE/dW_hid[c|in_j|phi_j, :] += dE/ds_c * (the traces of c)
//
// Those are exactly autograd's gradients when every t-1 source is detached (the error
// reaches the past only along s, where d s_t / d s_{t-1} = phi_t).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace lstmlab::net1997 {

// The codes of lstmlab.cells.ACTIVATIONS (Activation.code).
enum Act : int { kTanh = 0, kSigmoid = 1, kRelu = 2, kIdentity = 3, kG1997 = 4, kH1997 = 5 };

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

inline double act(int code, double x) {
  switch (code) {
    case kTanh: return std::tanh(x);
    case kSigmoid: return sigmoid(x);
    case kRelu: return x > 0 ? x : 0.0;
    case kIdentity: return x;
    case kG1997: return 4.0 * sigmoid(x) - 2.0;
    case kH1997: return 2.0 * sigmoid(x) - 1.0;
  }
  throw std::invalid_argument("net1997: unknown activation code");
}

// The derivative at the input whose output is y.
inline double act_grad(int code, double y) {
  switch (code) {
    case kTanh: return 1.0 - y * y;
    case kSigmoid: return y * (1.0 - y);
    case kRelu: return y > 0 ? 1.0 : 0.0;
    case kIdentity: return 1.0;
    case kG1997: {
      const double s = (y + 2.0) * 0.25;
      return 4.0 * s * (1.0 - s);
    }
    case kH1997: {
      const double s = (y + 1.0) * 0.5;
      return 2.0 * s * (1.0 - s);
    }
  }
  throw std::invalid_argument("net1997: unknown activation code");
}

// The topology, as net1997.py's BlockNet lays it out. Rows of W_hid: cells [0, C), then the
// gates (row_in, row_f, row_o: B rows each, -1 when absent), then the hidden units (row_h).
struct Topology {
  int I, K, B, n, H;  // inputs, outputs, blocks, cells per block, hidden units
  bool has_in, has_f, has_o;
  bool rec_cells, rec_gates, rec_hidden;  // the groups of r, in this order
  int act_g, act_h, act_out;
  int C, G, U, R, S, O, row_in, row_f, row_o, row_h;

  explicit Topology(const std::vector<int64_t>& c) {
    if (c.size() != 14) throw std::invalid_argument("net1997: bad configuration");
    I = (int)c[0], K = (int)c[1], B = (int)c[2], n = (int)c[3], H = (int)c[4];
    has_in = c[5], has_f = c[6], has_o = c[7], rec_cells = c[8], rec_gates = c[9], rec_hidden = c[10];
    act_g = (int)c[11], act_h = (int)c[12], act_out = (int)c[13];
    C = B * n;
    G = (int)has_in + (int)has_f + (int)has_o;
    int row = C;
    row_in = has_in ? row : -1, row += has_in ? B : 0;
    row_f = has_f ? row : -1, row += has_f ? B : 0;
    row_o = has_o ? row : -1, row += has_o ? B : 0;
    row_h = row;
    U = row + H;
    R = (rec_cells ? C : 0) + (rec_gates ? G * B : 0) + (rec_hidden ? H : 0);
    S = I + 1 + R;
    O = C + H + I + 1;
  }
};

struct StepErrors {
  double sq = 0, max_abs = 0, max_sq = 0;
  bool any = false;
};

class Engine {
 public:
  Topology t;
  std::vector<double> Wh, Wo, Mh, Mo;  // weights and masks (U, S), (K, O)
  std::vector<double> gWh, gWo;        // the gradient accumulated since the last update
  std::vector<double> s, r;            // cell states (C), the t-1 sources (R)
  std::vector<double> tc, ti, tf;      // traces (C, S) each (ti, tf empty without the gate)
  bool connected = true;               // false: the output units see neither cells nor hidden units

  Engine(const std::vector<int64_t>& config, std::vector<double> w_hid, std::vector<double> w_out,
         std::vector<double> m_hid, std::vector<double> m_out)
      : t(config), Mh(std::move(m_hid)), Mo(std::move(m_out)) {
    if (Mh.size() != (size_t)t.U * t.S || Mo.size() != (size_t)t.K * t.O)
      throw std::invalid_argument("net1997: masks do not fit the topology");
    set_weights(std::move(w_hid), std::move(w_out));
    for (int k = 0; k < t.K; ++k)
      for (int i = 0; i < t.I; ++i) out_inputs_ = out_inputs_ || Mo[(size_t)k * t.O + t.C + t.H + i] != 0.0;
    nz_.reserve(t.S);
    gWh.assign(Wh.size(), 0.0), gWo.assign(Wo.size(), 0.0);
    z_.resize(t.S), a_.resize(t.U), in_.resize(t.B), f_.resize(t.B), o_.resize(t.B);
    g_.resize(t.C), hs_.resize(t.C), yc_.resize(t.C), hu_.resize(t.H), zo_.resize(t.C + t.H);
    delta_.resize(t.K), ec_.resize(t.C + t.H);
    reset();
  }

  void set_weights(std::vector<double> w_hid, std::vector<double> w_out) {
    if (w_hid.size() != (size_t)t.U * t.S || w_out.size() != (size_t)t.K * t.O)
      throw std::invalid_argument("net1997: weights do not fit the topology");
    Wh = std::move(w_hid), Wo = std::move(w_out);
    for (size_t k = 0; k < Wh.size(); ++k) Wh[k] *= Mh[k];
    for (size_t k = 0; k < Wo.size(); ++k) Wo[k] *= Mo[k];
  }

  void reset() {
    s.assign(t.C, 0.0), r.assign(t.R, 0.0);
    tc.assign((size_t)t.C * t.S, 0.0);
    ti.assign(t.has_in ? (size_t)t.C * t.S : 0, 0.0);
    tf.assign(t.has_f ? (size_t)t.C * t.S : 0, 0.0);
  }

  void zero_grad() {
    std::fill(gWh.begin(), gWh.end(), 0.0);
    std::fill(gWo.begin(), gWo.end(), 0.0);
  }

  // W -= lr * dE/dW on the weights that exist; the gradient is zeroed.
  void update(double lr) {
    for (size_t k = 0; k < Wh.size(); ++k) Wh[k] -= lr * gWh[k] * Mh[k];
    for (size_t k = 0; k < Wo.size(); ++k) Wo[k] -= lr * gWo[k] * Mo[k];
    zero_grad();
  }

  // One step: x (I), target (K, NaN = none) -> y (K). grad: accumulate dE/dW (the traces
  // advance either way, so a stream's state does not depend on whether it learned).
  StepErrors step(const double* x, const double* target, double* y, bool grad, bool traces) {
    const Topology& T = t;
    const int S = T.S;
    double* z = z_.data();
    std::copy(x, x + T.I, z);
    z[T.I] = 1.0;
    std::copy(r.begin(), r.end(), z + T.I + 1);
    find_nonzeros(z);
    for (int u = 0; u < T.U; ++u) a_[u] = dot_z(&Wh[(size_t)u * S], z);
    for (int j = 0; j < T.B; ++j) {
      in_[j] = T.has_in ? sigmoid(a_[T.row_in + j]) : 1.0;
      f_[j] = T.has_f ? sigmoid(a_[T.row_f + j]) : 1.0;
      o_[j] = T.has_o ? sigmoid(a_[T.row_o + j]) : 1.0;
    }
    for (int c = 0; c < T.C; ++c) {
      const int j = c / T.n;
      const double g = act(T.act_g, a_[c]), in = in_[j], f = f_[j];
      if (traces) {
        trace(&tc[(size_t)c * S], f, in * act_grad(T.act_g, g), z);
        if (T.has_in) trace(&ti[(size_t)c * S], f, g * in * (1.0 - in), z);
        if (T.has_f) trace(&tf[(size_t)c * S], f, s[c] * f * (1.0 - f), z);
      }
      s[c] = f * s[c] + in * g;
      g_[c] = g;
      hs_[c] = act(T.act_h, s[c]);
      yc_[c] = o_[j] * hs_[c];
    }
    for (int u = 0; u < T.H; ++u) hu_[u] = sigmoid(a_[T.row_h + u]);
    double* zo = zo_.data();
    if (connected) {
      std::copy(yc_.begin(), yc_.end(), zo);
      std::copy(hu_.begin(), hu_.end(), zo + T.C);
    } else {
      std::fill(zo, zo + T.C + T.H, 0.0);
    }
    StepErrors err;
    for (int k = 0; k < T.K; ++k) {
      y[k] = act(T.act_out, dot_out(&Wo[(size_t)k * T.O], zo, x));
      delta_[k] = 0.0;
      if (std::isnan(target[k])) continue;
      const double e = y[k] - target[k];
      err.any = true;
      err.sq += 0.5 * e * e;
      err.max_abs = std::max(err.max_abs, std::abs(e));
      err.max_sq = std::max(err.max_sq, e * e);
      delta_[k] = e * act_grad(T.act_out, y[k]);
    }
    if (grad && err.any) backward(z, zo, x);
    // the next step's t-1 sources
    double* rn = r.data();
    if (T.rec_cells) rn = std::copy(yc_.begin(), yc_.end(), rn);
    if (T.rec_gates) {
      if (T.has_in) rn = std::copy(in_.begin(), in_.end(), rn);
      if (T.has_f) rn = std::copy(f_.begin(), f_.end(), rn);
      if (T.has_o) rn = std::copy(o_.begin(), o_.end(), rn);
    }
    if (T.rec_hidden) std::copy(hu_.begin(), hu_.end(), rn);
    return err;
  }

 private:
  std::vector<double> z_, a_, in_, f_, o_, g_, hs_, yc_, hu_, zo_, delta_, ec_;
  // The nonzero entries of z when they are few (one-hot inputs, a wide input layer): the
  // products over z, the output layer's over x and the traces where phi = 1 skip the zeros.
  std::vector<int> nz_;
  int nnz_x_ = 0;            // how many of nz_ index x (they come first)
  bool sparse_ = false;      // z has few enough nonzeros to use nz_
  bool out_inputs_ = false;  // some output unit sees the inputs (output_from_inputs)

  void find_nonzeros(const double* z) {
    nz_.clear();
    for (int k = 0; k < t.S; ++k)
      if (z[k] != 0.0) nz_.push_back(k);
    nnz_x_ = (int)(std::lower_bound(nz_.begin(), nz_.end(), t.I) - nz_.begin());
    sparse_ = 3 * nz_.size() < (size_t)t.S;
  }
  double dot_z(const double* w, const double* z) const {
    if (!sparse_) return dot(w, z, t.S);
    double acc = 0.0;
    for (int k : nz_) acc += w[k] * z[k];
    return acc;
  }
  void axpy_z(double alpha, const double* z, double* y) const {
    if (!sparse_) return axpy(alpha, z, y, t.S);
    for (int k : nz_) y[k] += alpha * z[k];
  }
  // trace <- phi trace + alpha z (exactly the zeros' trace entries stay put when phi = 1)
  void trace(double* tr, double phi, double alpha, const double* z) const {
    if (sparse_ && phi == 1.0) {
      for (int k : nz_) tr[k] += alpha * z[k];
      return;
    }
    for (int k = 0; k < t.S; ++k) tr[k] = phi * tr[k] + alpha * z[k];
  }
  // w . [y_c, hidden, x, 1] with w one row of W_out (its input columns are zero unless out_inputs_)
  double dot_out(const double* w, const double* zo, const double* x) const {
    const int CH = t.C + t.H;
    double acc = dot(w, zo, CH);
    if (out_inputs_) {
      if (sparse_)
        for (int q = 0; q < nnz_x_; ++q) acc += w[CH + nz_[q]] * x[nz_[q]];
      else
        acc += dot(w + CH, x, t.I);
    }
    return acc + w[t.O - 1];
  }
  void axpy_out(double alpha, const double* zo, const double* x, double* g) const {
    const int CH = t.C + t.H;
    axpy(alpha, zo, g, CH);
    if (out_inputs_) {
      if (sparse_)
        for (int q = 0; q < nnz_x_; ++q) g[CH + nz_[q]] += alpha * x[nz_[q]];
      else
        axpy(alpha, x, g + CH, t.I);
    }
    g[t.O - 1] += alpha;
  }

  // Four running sums: without -ffast-math one sum is a chain the compiler may not reorder.
  static double dot(const double* a, const double* b, int n) {
    double acc[4] = {0.0, 0.0, 0.0, 0.0};
    int k = 0;
    for (; k + 4 <= n; k += 4)
      for (int l = 0; l < 4; ++l) acc[l] += a[k + l] * b[k + l];
    for (; k < n; ++k) acc[0] += a[k] * b[k];
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
  }
  static void axpy(double alpha, const double* x, double* y, int n) {
    for (int k = 0; k < n; ++k) y[k] += alpha * x[k];
  }

  void backward(const double* z, const double* zo, const double* x) {
    const Topology& T = t;
    const int S = T.S;
    std::fill(ec_.begin(), ec_.end(), 0.0);  // dE/d(cell output), dE/d(hidden unit)
    for (int k = 0; k < T.K; ++k) {
      const double d = delta_[k];
      if (d == 0.0) continue;
      axpy_out(d, zo, x, &gWo[(size_t)k * T.O]);
      axpy(d, &Wo[(size_t)k * T.O], ec_.data(), T.C + T.H);
    }
    if (!connected) return;  // no error reaches the hidden layer
    for (int j = 0; j < T.B; ++j) {
      const double o = o_[j];
      double e_out = 0.0;
      for (int c = j * T.n; c < (j + 1) * T.n; ++c) {
        e_out += ec_[c] * hs_[c];
        const double ds = ec_[c] * o * act_grad(T.act_h, hs_[c]);
        if (ds == 0.0) continue;
        axpy(ds, &tc[(size_t)c * S], &gWh[(size_t)c * S], S);
        if (T.has_in) axpy(ds, &ti[(size_t)c * S], &gWh[(size_t)(T.row_in + j) * S], S);
        if (T.has_f) axpy(ds, &tf[(size_t)c * S], &gWh[(size_t)(T.row_f + j) * S], S);
      }
      if (T.has_o) axpy_z(e_out * o * (1.0 - o), z, &gWh[(size_t)(T.row_o + j) * S]);
    }
    for (int u = 0; u < T.H; ++u) {
      const double h = hu_[u];
      axpy_z(ec_[T.C + u] * h * (1.0 - h), z, &gWh[(size_t)(T.row_h + u) * S]);
    }
  }
};

}  // namespace lstmlab::net1997

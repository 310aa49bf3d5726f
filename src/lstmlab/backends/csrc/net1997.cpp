// Python binding of the 1997 machine's engine (net1997.h): loops over sequences and streams
// with the GIL released. Arrays are float64, C-contiguous (numpy's forcecast copies others).
// Used by lstmlab.train.net1997_cpp; built by lstmlab.backends.csrc.load_net1997().
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <limits>

#include "net1997.h"

namespace py = pybind11;
using Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using lstmlab::net1997::Engine;
using lstmlab::net1997::StepErrors;

namespace {

std::vector<double> to_vector(const Array& a) { return std::vector<double>(a.data(), a.data() + a.size()); }

void need(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("net1997 engine: bad ") + what);
}

Engine make(std::vector<int64_t> config, const Array& w_hid, const Array& w_out, const Array& m_hid,
            const Array& m_out) {
  return Engine(config, to_vector(w_hid), to_vector(w_out), to_vector(m_hid), to_vector(m_out));
}

py::tuple get_weights(const Engine& e) {
  Array w_hid({e.t.U, e.t.S}), w_out({e.t.K, e.t.O});
  std::copy(e.Wh.begin(), e.Wh.end(), w_hid.mutable_data());
  std::copy(e.Wo.begin(), e.Wo.end(), w_out.mutable_data());
  return py::make_tuple(w_hid, w_out);
}

void set_weights(Engine& e, const Array& w_hid, const Array& w_out) { e.set_weights(to_vector(w_hid), to_vector(w_out)); }

// Each sequence from the zero state; with `learn`, one update after it (each_step: after
// every step with a target). Returns (max |error| (N,), loss (N,), outputs (N, T, K) or
// None), each measured before the update.
py::tuple sequences(Engine& e, const Array& xs, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& lengths,
                    const Array& targets, double lr, bool learn, bool want_outputs, bool each_step) {
  const auto& T = e.t;
  need(xs.ndim() == 3 && xs.shape(2) == T.I, "xs");
  const py::ssize_t N = xs.shape(0), L = xs.shape(1);
  need(targets.ndim() == 3 && targets.shape(0) == N && targets.shape(1) == L && targets.shape(2) == T.K, "targets");
  need(lengths.ndim() == 1 && lengths.shape(0) == N, "lengths");
  Array worst(N), loss(N);
  Array outputs = want_outputs ? Array({N, L, (py::ssize_t)T.K}) : Array(0);
  double* out = want_outputs ? outputs.mutable_data() : nullptr;
  if (out) std::fill(out, out + N * L * T.K, std::numeric_limits<double>::quiet_NaN());
  const double *x = xs.data(), *tg = targets.data();
  const int64_t* len = lengths.data();
  double *w = worst.mutable_data(), *l = loss.mutable_data();
  {
    py::gil_scoped_release release;
    std::vector<double> y(T.K);
    for (py::ssize_t q = 0; q < N; ++q) {
      e.reset();
      e.zero_grad();
      w[q] = l[q] = 0.0;
      const int64_t n = std::min<int64_t>(len[q], L);
      for (int64_t k = 0; k < n; ++k) {
        const size_t at = (size_t)(q * L + k);
        double* yk = out ? out + at * T.K : y.data();
        const StepErrors err = e.step(x + at * T.I, tg + at * T.K, yk, learn, learn);
        w[q] = std::max(w[q], err.max_abs);
        l[q] += err.sq;
        if (learn && each_step && err.any) e.update(lr);
      }
      if (learn && !each_step) e.update(lr);
    }
    e.reset();
  }
  return py::make_tuple(worst, loss, want_outputs ? py::object(outputs) : py::object(py::none()));
}

// dE/dW of one sequence from the zero state, no update: (dW_hid (U, S), dW_out (K, O)).
py::tuple gradient(Engine& e, const Array& x, const Array& targets) {
  const auto& T = e.t;
  need(x.ndim() == 2 && x.shape(1) == T.I, "x");
  need(targets.ndim() == 2 && targets.shape(0) == x.shape(0) && targets.shape(1) == T.K, "targets");
  e.reset();
  e.zero_grad();
  std::vector<double> y(T.K);
  for (py::ssize_t k = 0; k < x.shape(0); ++k) e.step(x.data() + k * T.I, targets.data() + k * T.K, y.data(), true, true);
  Array g_hid({T.U, T.S}), g_out({T.K, T.O});
  std::copy(e.gWh.begin(), e.gWh.end(), g_hid.mutable_data());
  std::copy(e.gWo.begin(), e.gWo.end(), g_out.mutable_data());
  e.zero_grad();
  e.reset();
  return py::make_tuple(g_hid, g_out);
}

// A continual stream from the current state: update every step (each_step) or once at the
// end; stop after the first step whose max squared error >= stop_error (NaN: never).
// Returns (outputs (steps, K), cell states (steps, C), steps).
py::tuple stream(Engine& e, const Array& x, const Array& targets, double lr, double stop_error, bool each_step,
                 bool learn) {
  const auto& T = e.t;
  need(x.ndim() == 2 && x.shape(1) == T.I, "x");
  need(targets.ndim() == 2 && targets.shape(0) == x.shape(0) && targets.shape(1) == T.K, "targets");
  const py::ssize_t L = x.shape(0);
  Array outputs({L, (py::ssize_t)T.K}), states({L, (py::ssize_t)T.C});
  double *out = outputs.mutable_data(), *st = states.mutable_data();
  py::ssize_t steps = 0;
  {
    py::gil_scoped_release release;
    e.zero_grad();
    while (steps < L) {
      const StepErrors err = e.step(x.data() + steps * T.I, targets.data() + steps * T.K, out + steps * T.K, learn, true);
      std::copy(e.s.begin(), e.s.end(), st + steps * T.C);
      ++steps;
      if (learn && each_step && err.any) e.update(lr);
      if (err.any && err.max_sq >= stop_error) break;  // false for NaN
    }
    if (learn && !each_step) e.update(lr);
    e.zero_grad();
  }
  py::object out_rows = outputs[py::slice(0, steps, 1)];
  py::object state_rows = states[py::slice(0, steps, 1)];
  return py::make_tuple(out_rows, state_rows, steps);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "lstmlab: the 1997 machine's engine (see lstmlab.train.net1997)";
  py::class_<Engine>(m, "Engine")
      .def(py::init(&make))
      .def("reset", &Engine::reset)
      .def_readwrite("connected", &Engine::connected)
      .def("get_weights", &get_weights)
      .def("set_weights", &set_weights)
      .def("sequences", &sequences)
      .def("gradient", &gradient)
      .def("stream", &stream);
}

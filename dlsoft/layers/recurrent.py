"""Recurrent layers: LSTM, RNN and LSTMUnit (Caffe's recurrent_layer / lstm_layer / rnn_layer).

Caffe builds an unrolled net of InnerProduct/Eltwise/LSTMUnit layers; we compute the
same math directly, vectorised over the batch with a Python loop over time steps, and
keep exactly Caffe's learnable blobs (names, order, shapes) so caffemodels load.

Blob layout: ``x`` is T×N×..., ``cont`` is T×N (0 starts a new sequence: it multiplies
the previous hidden and cell state), the optional static input ``x_static`` is N×...
and is added to every time step's input transform.

Hidden state across forward calls (Caffe's behaviour): without ``expose_hidden`` the
state a forward call starts from is the last state of the previous call, so a
sequence may continue over batches when ``cont[0] == 1`` (gradient does not flow
across calls). With ``expose_hidden`` the initial state comes from extra bottoms
``h_0`` (and ``c_0``), each 1×N×H, and the final state goes to extra tops ``h_T``
(and ``c_T``). Unlike Caffe, whose unrolled net shares only their data, we
backpropagate exactly through these too: ``h_T``/``c_T`` diffs flow in, ``h_0``/``c_0``
get their gradient.
"""
from __future__ import annotations

from .base import Layer
from .fillers import fill
from .registry import register


def _sigmoid(xp, x, out):
    """Logistic function written through tanh, which cannot overflow."""
    xp.multiply(x, 0.5, out=out)
    xp.tanh(out, out=out)
    out *= 0.5
    out += 0.5
    return out


def lstm_unit_forward(xp, c_prev, gate_input, cont, act, c, tanh_c, h):
    """One LSTM step (Caffe's LSTMUnit), arrays N×H / N×4H, ``cont`` N×1.

    ``act`` (N×4H) receives the activated gates [i, f, o, g]:
    i, f, o = sigmoid(.), g = tanh(.); c = cont·f·c_prev + i·g; h = o·tanh(c).
    """
    hidden = c.shape[-1]
    _sigmoid(xp, gate_input[:, :3 * hidden], act[:, :3 * hidden])
    xp.tanh(gate_input[:, 3 * hidden:], out=act[:, 3 * hidden:])
    i, f, o, g = (act[:, k * hidden:(k + 1) * hidden] for k in range(4))
    xp.multiply(f, c_prev, out=c)
    c *= cont
    c += i * g
    xp.tanh(c, out=tanh_c)
    xp.multiply(o, tanh_c, out=h)


def lstm_unit_backward(act, c_prev, cont, tanh_c, dc, dh, d_gate_input):
    """Backward of :func:`lstm_unit_forward`. ``dc`` (N×H) holds dL/dc_t from later
    steps and is overwritten with the total dL/dc_t; fills ``d_gate_input`` (N×4H) and
    returns dL/dc_prev."""
    hidden = dc.shape[-1]
    i, f, o, g = (act[:, k * hidden:(k + 1) * hidden] for k in range(4))
    dc += dh * o * (1 - tanh_c * tanh_c)
    di, df, do, dg = (d_gate_input[:, k * hidden:(k + 1) * hidden] for k in range(4))
    di[...] = dc * g * i * (1 - i)
    df[...] = dc * cont * c_prev * f * (1 - f)
    do[...] = dh * tanh_c * o * (1 - o)
    dg[...] = dc * i * (1 - g * g)
    return dc * cont * f


class _RecurrentLayer(Layer):
    """Shared bottom/top bookkeeping of LSTM and RNN (Caffe's RecurrentLayer).

    Subclasses set ``num_states`` (1 for RNN: h; 2 for LSTM: h, c) and implement
    ``_make_blobs``, ``_forward`` and ``_backward``.
    """

    min_bottoms = 2
    min_tops = 1
    num_states = 1

    def setup(self, bottoms, tops):
        p = self.param.recurrent_param
        self.hidden = int(p.num_output)
        if self.hidden <= 0:
            raise self.error("recurrent_param.num_output must be positive")
        self.expose_hidden = bool(p.expose_hidden)
        exposed = self.num_states if self.expose_hidden else 0
        self.static_input = len(bottoms) > 2 + exposed
        if len(bottoms) > 3 + exposed:
            raise self.error(f"expected at most {3 + exposed} bottoms (x, cont, [x_static]"
                             f"{', initial states' if exposed else ''}), got {len(bottoms)}")
        if len(tops) != 1 + exposed:
            raise self.error(f"expected {1 + exposed} tops, got {len(tops)}")
        x = bottoms[0]
        if x.num_axes < 3:
            raise self.error(f"bottom 'x' must be T x N x ..., got shape {x.shape}")
        self.input_dim = x.count_from(2)
        self.static_dim = bottoms[2].count_from(1) if self.static_input else 0
        self._make_blobs(p)
        self.param_propagate_down = [True] * len(self.blobs)
        self._carried = None  # the state carried between calls when not expose_hidden

    def _new_param(self, role, shape, filler):
        blob = self.make_blob(shape, role)
        fill(blob, filler)
        self.blobs.append(blob)
        return blob

    def reshape(self, bottoms, tops):
        x, cont = bottoms[0], bottoms[1]
        if x.count_from(2) != self.input_dim or x.num_axes < 3:
            raise self.error(f"bottom 'x' must be T x N x {self.input_dim}..., got shape {x.shape}")
        self.T, self.N = x.shape[0], x.shape[1]
        if cont.shape != (self.T, self.N):
            raise self.error(f"bottom 'cont' must be T x N = {(self.T, self.N)}, got {cont.shape}")
        if self.static_input:
            s = bottoms[2]
            if s.shape[0] != self.N or s.count_from(1) != self.static_dim:
                raise self.error(f"bottom 'x_static' must be N x {self.static_dim}, got {s.shape}")
        state_shape = (1, self.N, self.hidden)
        first_state = 2 + self.static_input
        for k, b in enumerate(bottoms[first_state:]):
            if b.shape != state_shape:
                raise self.error(f"initial state bottom {first_state + k} must be {state_shape}, got {b.shape}")
        tops[0].reshape(self.T, self.N, self.hidden)
        for top in tops[1:]:
            top.reshape(state_shape)
        xp = self.xp
        if self._carried is None or self._carried[0].shape != (self.N, self.hidden):
            self._carried = [xp.zeros((self.N, self.hidden), dtype=xp.float32) for _ in range(self.num_states)]
        self._resize_buffers(xp)

    def _initial_states(self, bottoms):
        if self.expose_hidden:
            first = 2 + self.static_input
            return [b.data.reshape(self.N, self.hidden) for b in bottoms[first:]]
        return self._carried

    def _final_states(self, tops, states):
        """Publish the last states: to the extra tops, or keep them for the next call."""
        targets = [t.data.reshape(self.N, self.hidden) for t in tops[1:]] if self.expose_hidden else self._carried
        for target, state in zip(targets, states):
            target[...] = state

    def _input_transform(self, bottoms, w_x, bias, w_static, out):
        """out (T×N×G) = x·W_xᵀ + b [+ x_static·W_staticᵀ, broadcast over time]."""
        xp = self.xp
        x = bottoms[0].data.reshape(self.T * self.N, self.input_dim)
        xp.matmul(x, w_x.data.T, out=out.reshape(self.T * self.N, -1))
        out += bias.data
        if self.static_input:
            out += (bottoms[2].data.reshape(self.N, self.static_dim) @ w_static.data.T)[None]

    def _input_backward(self, bottoms, propagate_down, d_pre, w_x, bias, w_static):
        """Gradients of :meth:`_input_transform` from d_pre = dL/d(out), T×N×G."""
        d_flat = d_pre.reshape(self.T * self.N, -1)
        x = bottoms[0].data.reshape(self.T * self.N, self.input_dim)
        if self.param_propagate_down[0]:
            w_x.diff[...] += d_flat.T @ x
        if self.param_propagate_down[1]:
            bias.diff[...] += d_flat.sum(axis=0)
        if propagate_down[0]:
            self.xp.matmul(d_flat, w_x.data, out=bottoms[0].diff.reshape(self.T * self.N, self.input_dim))
        if self.static_input:
            d_static = d_pre.sum(axis=0)
            if self.param_propagate_down[2]:
                w_static.diff[...] += d_static.T @ bottoms[2].data.reshape(self.N, self.static_dim)
            if propagate_down[2]:
                bottoms[2].diff[...] = (d_static @ w_static.data).reshape(bottoms[2].shape)

    def _final_state_diffs(self, tops):
        if self.expose_hidden:
            return [t.diff.reshape(self.N, self.hidden).copy() for t in tops[1:]]
        xp = self.xp
        return [xp.zeros((self.N, self.hidden), dtype=xp.float32) for _ in range(self.num_states)]

    def _initial_state_diffs(self, bottoms, propagate_down, diffs):
        if self.expose_hidden:
            first = 2 + self.static_input
            for k, d in enumerate(diffs):
                if propagate_down[first + k]:
                    bottoms[first + k].diff[...] = d.reshape(1, self.N, self.hidden)

    def allow_backward_to(self, bottom_index):
        return bottom_index != 1  # no gradient for the sequence-continuation flags


@register
class LSTMLayer(_RecurrentLayer):
    """Long short-term memory over T time steps (Caffe's LSTM).

    Blobs, in Caffe's order: W_xc (4H×D), b_c (4H), [W_xc_static (4H×S)], W_hc (4H×H).
    gate_t = W_xc·x_t + b_c [+ W_xc_static·x_static] + W_hc·(cont_t·h_{t-1}), split as
    [i, f, o, g]; i, f, o = sigmoid, g = tanh; c_t = cont_t·f·c_{t-1} + i·g;
    h_t = o·tanh(c_t). Top: h (T×N×H) [, h_T, c_T].
    """

    type = "LSTM"
    max_bottoms = 5
    max_tops = 3
    num_states = 2

    def _make_blobs(self, p):
        h4 = 4 * self.hidden
        # Caffe's names for them (the ParamSpec names of its unrolled net).
        self._new_param("W_xc", (h4, self.input_dim), p.weight_filler)
        self._new_param("b_c", (h4,), p.bias_filler)
        if self.static_input:
            self._new_param("W_xc_static", (h4, self.static_dim), p.weight_filler)
        self._new_param("W_hc", (h4, self.hidden), p.weight_filler)

    def _resize_buffers(self, xp):
        T, N, H = self.T, self.N, self.hidden
        self.gates = xp.empty((T, N, 4 * H), dtype=xp.float32)  # pre-activations, then d(pre)
        self.acts = xp.empty((T, N, 4 * H), dtype=xp.float32)
        self.cells = xp.empty((T, N, H), dtype=xp.float32)
        self.tanh_cells = xp.empty((T, N, H), dtype=xp.float32)
        self.h_conted = xp.empty((T, N, H), dtype=xp.float32)  # cont_t·h_{t-1}, the input of W_hc
        self.c_prev0 = xp.empty((N, H), dtype=xp.float32)

    def _params(self):
        w_static = self.blobs[2] if self.static_input else None
        return self.blobs[0], self.blobs[1], w_static, self.blobs[-1]

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        w_x, b, w_static, w_h = self._params()
        self._input_transform(bottoms, w_x, b, w_static, self.gates)
        h_prev, c_prev = self._initial_states(bottoms)
        self.c_prev0[...] = c_prev
        cont = bottoms[1].data[:, :, None]
        h_all = tops[0].data
        for t in range(self.T):
            xp.multiply(h_prev, cont[t], out=self.h_conted[t])
            self.gates[t] += self.h_conted[t] @ w_h.data.T
            lstm_unit_forward(xp, c_prev, self.gates[t], cont[t], self.acts[t],
                              self.cells[t], self.tanh_cells[t], h_all[t])
            h_prev, c_prev = h_all[t], self.cells[t]
        self._final_states(tops, (h_prev, c_prev))

    def backward_cpu(self, tops, propagate_down, bottoms):
        w_x, b, w_static, w_h = self._params()
        cont = bottoms[1].data[:, :, None]
        dh_next, dc = self._final_state_diffs(tops)
        d_gates = self.gates  # the pre-activations are not needed any more
        dh_top = tops[0].diff
        for t in reversed(range(self.T)):
            c_prev = self.cells[t - 1] if t > 0 else self.c_prev0
            dc = lstm_unit_backward(self.acts[t], c_prev, cont[t], self.tanh_cells[t],
                                    dc, dh_top[t] + dh_next, d_gates[t])
            dh_next = (d_gates[t] @ w_h.data) * cont[t]
        if self.param_propagate_down[-1]:
            w_h.diff[...] += d_gates.reshape(self.T * self.N, -1).T @ self.h_conted.reshape(self.T * self.N, -1)
        self._input_backward(bottoms, propagate_down, d_gates, w_x, b, w_static)
        self._initial_state_diffs(bottoms, propagate_down, (dh_next, dc))


@register
class RNNLayer(_RecurrentLayer):
    """Vanilla recurrent net over T time steps (Caffe's RNN).

    Blobs, in Caffe's order: W_xh (H×D), b_h (H), [W_xh_static (H×S)], W_hh (H×H),
    W_ho (H×H), b_o (H).
    h_t = tanh(W_xh·x_t + b_h [+ W_xh_static·x_static] + W_hh·(cont_t·h_{t-1}));
    o_t = tanh(W_ho·h_t + b_o). Top: o (T×N×H) [, h_T].
    """

    type = "RNN"
    max_bottoms = 4
    max_tops = 2
    num_states = 1

    def _make_blobs(self, p):
        H = self.hidden
        # Caffe's names for them (the ParamSpec names of its unrolled net).
        self._new_param("W_xh", (H, self.input_dim), p.weight_filler)
        self._new_param("b_h", (H,), p.bias_filler)
        if self.static_input:
            self._new_param("W_xh_static", (H, self.static_dim), p.weight_filler)
        self._new_param("W_hh", (H, H), p.weight_filler)
        self._new_param("W_ho", (H, H), p.weight_filler)
        self._new_param("b_o", (H,), p.bias_filler)

    def _resize_buffers(self, xp):
        T, N, H = self.T, self.N, self.hidden
        self.pre = xp.empty((T, N, H), dtype=xp.float32)  # hidden pre-activations, then their diff
        self.hiddens = xp.empty((T, N, H), dtype=xp.float32)
        self.h_conted = xp.empty((T, N, H), dtype=xp.float32)
        self.d_hiddens = xp.empty((T, N, H), dtype=xp.float32)

    def _params(self):
        w_static = self.blobs[2] if self.static_input else None
        return self.blobs[0], self.blobs[1], w_static, self.blobs[-3], self.blobs[-2], self.blobs[-1]

    def forward_cpu(self, bottoms, tops):
        xp = self.xp
        w_x, b_h, w_static, w_hh, w_ho, b_o = self._params()
        self._input_transform(bottoms, w_x, b_h, w_static, self.pre)
        (h_prev,) = self._initial_states(bottoms)
        cont = bottoms[1].data[:, :, None]
        for t in range(self.T):
            xp.multiply(h_prev, cont[t], out=self.h_conted[t])
            self.pre[t] += self.h_conted[t] @ w_hh.data.T
            xp.tanh(self.pre[t], out=self.hiddens[t])
            h_prev = self.hiddens[t]
        out = tops[0].data.reshape(self.T * self.N, self.hidden)
        xp.matmul(self.hiddens.reshape(self.T * self.N, -1), w_ho.data.T, out=out)
        out += b_o.data
        xp.tanh(out, out=out)
        self._final_states(tops, (h_prev,))

    def backward_cpu(self, tops, propagate_down, bottoms):
        xp = self.xp
        w_x, b_h, w_static, w_hh, w_ho, b_o = self._params()
        TN = self.T * self.N
        o = tops[0].data.reshape(TN, -1)
        d_out = tops[0].diff.reshape(TN, -1) * (1 - o * o)
        hiddens = self.hiddens.reshape(TN, -1)
        if self.param_propagate_down[-2]:
            w_ho.diff[...] += d_out.T @ hiddens
        if self.param_propagate_down[-1]:
            b_o.diff[...] += d_out.sum(axis=0)
        xp.matmul(d_out, w_ho.data, out=self.d_hiddens.reshape(TN, -1))
        cont = bottoms[1].data[:, :, None]
        (dh_next,) = self._final_state_diffs(tops)
        d_pre = self.pre
        for t in reversed(range(self.T)):
            h = self.hiddens[t]
            xp.multiply(self.d_hiddens[t] + dh_next, 1 - h * h, out=d_pre[t])
            dh_next = (d_pre[t] @ w_hh.data) * cont[t]
        if self.param_propagate_down[-3]:
            w_hh.diff[...] += d_pre.reshape(TN, -1).T @ self.h_conted.reshape(TN, -1)
        self._input_backward(bottoms, propagate_down, d_pre, w_x, b_h, w_static)
        self._initial_state_diffs(bottoms, propagate_down, (dh_next,))


@register
class LSTMUnitLayer(Layer):
    """One LSTM step (Caffe's LSTMUnit): bottoms c_prev (1×N×H), gate input X (1×N×4H,
    gates [i, f, o, g]), cont (1×N); tops c, h (1×N×H). Math as in
    :func:`lstm_unit_forward`. No gradient flows to ``cont``.
    """

    type = "LSTMUnit"
    exact_num_bottoms = 3
    exact_num_tops = 2

    def allow_backward_to(self, bottom_index):
        return bottom_index != 2

    def reshape(self, bottoms, tops):
        c_prev, gates, cont = bottoms
        if c_prev.num_axes != 3 or c_prev.shape[0] != 1:
            raise self.error(f"bottom 0 (c_prev) must be 1 x N x H, got {c_prev.shape}")
        _, n, h = c_prev.shape
        if gates.shape != (1, n, 4 * h):
            raise self.error(f"bottom 1 (gate input) must be {(1, n, 4 * h)}, got {gates.shape}")
        if cont.shape != (1, n):
            raise self.error(f"bottom 2 (cont) must be {(1, n)}, got {cont.shape}")
        self.n, self.h = n, h
        for top in tops:
            top.reshape(c_prev.shape)
        xp = self.xp
        self.acts = xp.empty((n, 4 * h), dtype=xp.float32)
        self.tanh_c = xp.empty((n, h), dtype=xp.float32)

    def forward_cpu(self, bottoms, tops):
        c_prev, gates, cont = (b.data[0] for b in bottoms)
        lstm_unit_forward(self.xp, c_prev, gates, cont[:, None], self.acts,
                          tops[0].data[0], self.tanh_c, tops[1].data[0])

    def backward_cpu(self, tops, propagate_down, bottoms):
        if not (propagate_down[0] or propagate_down[1]):
            return
        c_prev, cont = bottoms[0].data[0], bottoms[2].data[0][:, None]
        dc = tops[0].diff[0].copy()
        d_gates = self.xp.empty((self.n, 4 * self.h), dtype=self.xp.float32)
        dc_prev = lstm_unit_backward(self.acts, c_prev, cont, self.tanh_c, dc, tops[1].diff[0], d_gates)
        if propagate_down[0]:
            bottoms[0].diff[0] = dc_prev
        if propagate_down[1]:
            bottoms[1].diff[0] = d_gates

"""Numeric functions generated from the SymPy derivations. Do not edit.

Regenerate with ``lipschitz-lab derive --codegen`` (``make derive``).
"""
from lipschitz_lab import _ops

def mse_dE_dz(z, y, m):
    """dE/dz: -(y - z)/m"""
    return -(y - z)/m

def mse_sup(K_a, y_norm, m):
    """sup |dE/dz|: (K_a + y_norm)/m"""
    return (K_a + y_norm)/m

def mse_smooth(m):
    """S2 = sup ||d2E/dz2||: 1/m"""
    return 1/m

def mse_E(z, y, m):
    """batch loss = sum over samples of E(z_i, y_i): (-y + z)**2/(2*m)"""
    return (1/2)*(-y + z)**2/m

def mse_L_paper(K_z, K_a, y_norm, m):
    """L as published (eq. 9): K_z*(K_a - y_norm)/m"""
    return K_z*(K_a - y_norm)/m

def mse_L_corrected(K_z, K_a, y_norm, m):
    """L from the derived supremum: K_z*(K_a + y_norm)/m"""
    return K_z*(K_a + y_norm)/m

def mse_L_strict_max_abs(K_z, K_a, y_norm):
    """rigorous bound on the last layer's gradient, K_z = max_abs: (K_a + y_norm)*Max(1, K_z)"""
    return (K_a + y_norm)*_ops.Max(1, K_z)

def mse_L_strict_frobenius(K_z, K_a, y_norm, m):
    """rigorous bound on the last layer's gradient, K_z = frobenius: (K_a + y_norm)*Max(K_z, sqrt(m))/sqrt(m)"""
    return (K_a + y_norm)*_ops.Max(K_z, _ops.sqrt(m))/_ops.sqrt(m)

def bce_dE_dz(z, y, m):
    """dE/dz: -(y - sigmoid(z))/m"""
    return -(y - _ops.sigmoid(z))/m

def bce_sup(m):
    """sup |dE/dz|: 1/m"""
    return 1/m

def bce_smooth(m):
    """S2 = sup ||d2E/dz2||: 1/(4*m)"""
    return (1/4)/m

def bce_E(z, y, m):
    """batch loss = sum over samples of E(z_i, y_i): (-y*log(sigmoid(z)) - (1 - y)*log(1 - sigmoid(z)))/m"""
    return (-y*_ops.log_sigmoid(z) - (1 - y)*_ops.log_sigmoid(-z))/m

def bce_L_paper(K_z, m):
    """L as published (eq. 15): K_z/(2*m)"""
    return (1/2)*K_z/m

def bce_L_corrected(K_z, m):
    """L from the derived supremum: K_z/m"""
    return K_z/m

def bce_L_strict_max_abs(K_z):
    """rigorous bound on the last layer's gradient, K_z = max_abs: Max(1, K_z)"""
    return _ops.Max(1, K_z)

def bce_L_strict_frobenius(K_z, m):
    """rigorous bound on the last layer's gradient, K_z = frobenius: Max(K_z, sqrt(m))/sqrt(m)"""
    return _ops.Max(K_z, _ops.sqrt(m))/_ops.sqrt(m)

def softmax_ce_dE_dz(z, r, t, m):
    """dE/dz: -(t - sigmoid(-r + z))/m"""
    return -(t - _ops.sigmoid(-r + z))/m

def softmax_ce_sup(m):
    """sup |dE/dz|: 1/m"""
    return 1/m

def softmax_ce_smooth(m):
    """S2 = sup ||d2E/dz2||: 1/(2*m)"""
    return (1/2)/m

def softmax_ce_E_unit(z, t, m):
    """batch loss, unit part: summed over samples and units: -t*z/m"""
    return -t*z/m

def softmax_ce_E_norm(lse, m):
    """batch loss, normaliser part: summed over samples, lse = logsumexp of the logits: lse/m"""
    return lse/m

def softmax_ce_L_paper(K_z, m, k):
    """L as published (eq. 20): K_z*(k - 1)/(k*m)"""
    return K_z*(k - 1)/(k*m)

def softmax_ce_L_corrected(K_z, m):
    """L from the derived supremum: K_z/m"""
    return K_z/m

def softmax_ce_L_strict_max_abs(K_z):
    """rigorous bound on the last layer's gradient, K_z = max_abs: Max(1, K_z)"""
    return _ops.Max(1, K_z)

def softmax_ce_L_strict_frobenius(K_z, m):
    """rigorous bound on the last layer's gradient, K_z = frobenius: Max(K_z, sqrt(m))/sqrt(m)"""
    return _ops.Max(K_z, _ops.sqrt(m))/_ops.sqrt(m)

def label_smoothed_ce_dE_dz(z, r, t, m, k, eps):
    """dE/dz: (eps*k*t - eps - k*t + k*sigmoid(-r + z))/(k*m)"""
    return (eps*k*t - eps - k*t + k*_ops.sigmoid(-r + z))/(k*m)

def label_smoothed_ce_sup(m, k, eps):
    """sup |dE/dz|: (-eps + k)/(k*m)"""
    return (-eps + k)/(k*m)

def label_smoothed_ce_smooth(m):
    """S2 = sup ||d2E/dz2||: 1/(2*m)"""
    return (1/2)/m

def label_smoothed_ce_E_unit(z, t, m, k, eps):
    """batch loss, unit part: summed over samples and units: z*(eps*k*t - eps - k*t)/(k*m)"""
    return z*(eps*k*t - eps - k*t)/(k*m)

def label_smoothed_ce_E_norm(lse, m):
    """batch loss, normaliser part: summed over samples, lse = logsumexp of the logits: lse/m"""
    return lse/m

def label_smoothed_ce_L_corrected(K_z, m, k, eps):
    """L from the derived supremum: K_z*(-eps + k)/(k*m)"""
    return K_z*(-eps + k)/(k*m)

def label_smoothed_ce_L_strict_max_abs(K_z, k, eps):
    """rigorous bound on the last layer's gradient, K_z = max_abs: (-eps + k)*Max(1, K_z)/k"""
    return (-eps + k)*_ops.Max(1, K_z)/k

def label_smoothed_ce_L_strict_frobenius(K_z, m, k, eps):
    """rigorous bound on the last layer's gradient, K_z = frobenius: (-eps + k)*Max(K_z, sqrt(m))/(k*sqrt(m))"""
    return (-eps + k)*_ops.Max(K_z, _ops.sqrt(m))/(k*_ops.sqrt(m))

def weight_decay(lam, w_max):
    """lam/2 |w|^2 adds lam * w_max: lam*w_max"""
    return lam*w_max


#: (loss, what) -> (function, argument names)
FUNCTIONS = {
    ('mse', 'dE_dz'): (mse_dE_dz, ('z', 'y', 'm')),
    ('mse', 'sup'): (mse_sup, ('K_a', 'y_norm', 'm')),
    ('mse', 'smooth'): (mse_smooth, ('m',)),
    ('mse', 'E'): (mse_E, ('z', 'y', 'm')),
    ('mse', 'paper'): (mse_L_paper, ('K_z', 'K_a', 'y_norm', 'm')),
    ('mse', 'corrected'): (mse_L_corrected, ('K_z', 'K_a', 'y_norm', 'm')),
    ('mse', 'strict_max_abs'): (mse_L_strict_max_abs, ('K_z', 'K_a', 'y_norm')),
    ('mse', 'strict_frobenius'): (mse_L_strict_frobenius, ('K_z', 'K_a', 'y_norm', 'm')),
    ('bce', 'dE_dz'): (bce_dE_dz, ('z', 'y', 'm')),
    ('bce', 'sup'): (bce_sup, ('m',)),
    ('bce', 'smooth'): (bce_smooth, ('m',)),
    ('bce', 'E'): (bce_E, ('z', 'y', 'm')),
    ('bce', 'paper'): (bce_L_paper, ('K_z', 'm')),
    ('bce', 'corrected'): (bce_L_corrected, ('K_z', 'm')),
    ('bce', 'strict_max_abs'): (bce_L_strict_max_abs, ('K_z',)),
    ('bce', 'strict_frobenius'): (bce_L_strict_frobenius, ('K_z', 'm')),
    ('softmax_ce', 'dE_dz'): (softmax_ce_dE_dz, ('z', 'r', 't', 'm')),
    ('softmax_ce', 'sup'): (softmax_ce_sup, ('m',)),
    ('softmax_ce', 'smooth'): (softmax_ce_smooth, ('m',)),
    ('softmax_ce', 'E_unit'): (softmax_ce_E_unit, ('z', 't', 'm')),
    ('softmax_ce', 'E_norm'): (softmax_ce_E_norm, ('lse', 'm')),
    ('softmax_ce', 'paper'): (softmax_ce_L_paper, ('K_z', 'm', 'k')),
    ('softmax_ce', 'corrected'): (softmax_ce_L_corrected, ('K_z', 'm')),
    ('softmax_ce', 'strict_max_abs'): (softmax_ce_L_strict_max_abs, ('K_z',)),
    ('softmax_ce', 'strict_frobenius'): (softmax_ce_L_strict_frobenius, ('K_z', 'm')),
    ('label_smoothed_ce', 'dE_dz'): (label_smoothed_ce_dE_dz, ('z', 'r', 't', 'm', 'k', 'eps')),
    ('label_smoothed_ce', 'sup'): (label_smoothed_ce_sup, ('m', 'k', 'eps')),
    ('label_smoothed_ce', 'smooth'): (label_smoothed_ce_smooth, ('m',)),
    ('label_smoothed_ce', 'E_unit'): (label_smoothed_ce_E_unit, ('z', 't', 'm', 'k', 'eps')),
    ('label_smoothed_ce', 'E_norm'): (label_smoothed_ce_E_norm, ('lse', 'm')),
    ('label_smoothed_ce', 'corrected'): (label_smoothed_ce_L_corrected, ('K_z', 'm', 'k', 'eps')),
    ('label_smoothed_ce', 'strict_max_abs'): (label_smoothed_ce_L_strict_max_abs, ('K_z', 'k', 'eps')),
    ('label_smoothed_ce', 'strict_frobenius'): (label_smoothed_ce_L_strict_frobenius, ('K_z', 'm', 'k', 'eps')),
    ('*', 'weight_decay'): (weight_decay, ('lam', 'w_max')),
}

#: loss -> how the lab feeds it a batch, its task, a binary target's label values
LOSS_INFO = {
    'mse': {'batch': 'elementwise', 'task': 'regression', 'labels': None},
    'bce': {'batch': 'elementwise', 'task': 'binary', 'labels': (0, 1)},
    'softmax_ce': {'batch': 'softmax', 'task': 'multiclass', 'labels': None},
    'label_smoothed_ce': {'batch': 'softmax', 'task': 'multiclass', 'labels': None},
}

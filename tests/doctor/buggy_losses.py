"""Hand-written KD losses as they appear in tutorials, for the doctor tests (not part of kdlab)."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions import Categorical, kl_divergence

TEMP = 5.0


def correct_with_labels(outputs, labels, teacher_outputs, T=4.0, alpha=0.9):
    """The classic (Hinton-correct) form: alpha weighs the soft term, T² included."""
    soft = nn.KLDivLoss(reduction="batchmean")(F.log_softmax(outputs / T, dim=1), F.softmax(teacher_outputs / T, dim=1))
    return soft * (alpha * T * T) + F.cross_entropy(outputs, labels) * (1.0 - alpha)


def reversed_kl(student_logits, teacher_logits, temperature):
    p = F.log_softmax(teacher_logits.detach() / temperature, 1)
    q = F.log_softmax(student_logits / temperature, 1)
    return F.kl_div(p, q, reduction="batchmean", log_target=True) * temperature**2


def teacher_not_detached(s, t, T):
    return F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def closure_temperature(y_s, y_t):
    """T lives in a module constant; soft term only."""
    return F.kl_div(F.log_softmax(y_s / TEMP, 1), F.softmax(y_t.detach() / TEMP, 1), reduction="batchmean") * TEMP**2


def summed(student, teacher, T):
    return F.kl_div(F.log_softmax(student / T, 1), F.softmax(teacher / T, 1), reduction="sum") * T * T


def only_teacher_softened(s, t, labels, T, hard=0.5):
    kd = F.kl_div(F.log_softmax(s, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return hard * F.cross_entropy(s, labels) + (1 - hard) * kd


def mse_logits(s, t, T):
    return F.mse_loss(s, t.detach())


def needs_weight(s, t, T, beta):
    return beta * F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T


def returns_dict(student_logits, teacher_logits, labels, T):
    soft = F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="batchmean")
    return {"loss": 0.3 * F.cross_entropy(student_logits, labels) + 0.7 * soft, "soft": soft}


def returns_float(s, t, T):
    return 1.0


def one_argument(x):
    return x.sum()


def broken_import_time():
    return torch.zeros(())


# --- losses as people really write them: nn.Module classes and instances -------------------------


class DistillKL(nn.Module):
    """RepDistiller's loss: T in the constructor, forward(y_s, y_t); correct (sum / batch = batchmean)."""

    def __init__(self, T):
        super().__init__()
        self.T = T

    def forward(self, y_s, y_t):
        p_s = F.log_softmax(y_s / self.T, dim=1)
        p_t = F.softmax(y_t / self.T, dim=1)
        return F.kl_div(p_s, p_t, reduction="sum") * (self.T**2) / y_s.shape[0]


class KDLoss(nn.Module):
    """Tutorial-style module with labels and a weight; correct."""

    def __init__(self, temperature=4.0, alpha=0.9):
        super().__init__()
        self.temperature, self.alpha = temperature, alpha
        self.kl = nn.KLDivLoss(reduction="batchmean")

    def forward(self, outputs, labels, teacher_outputs):
        T = self.temperature
        soft = self.kl(F.log_softmax(outputs / T, 1), F.softmax(teacher_outputs / T, 1)) * T * T
        return self.alpha * soft + (1 - self.alpha) * F.cross_entropy(outputs, labels)


class MeanKD(nn.Module):
    """reduction='mean' divides by the class count too."""

    def __init__(self, T, weight):
        super().__init__()
        self.T, self.weight = T, weight

    def forward(self, student_logits, teacher_logits):
        T = self.T
        kl = F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="none")
        return self.weight * kl.mean() * T * T  # what reduction="mean" computes


criterion = DistillKL(T=4.0)  # a module-level instance, as in `criterion_kd = DistillKL(opt.kd_T)`


class BrokenInit(nn.Module):
    def __init__(self, T=4.0):
        super().__init__()
        raise ValueError("needs a config file")

    def forward(self, student_logits, teacher_logits):
        return (student_logits - teacher_logits).pow(2).mean()


# --- other argument names ------------------------------------------------------------------------


def named_soft(soft_predictions, soft_labels, T):
    return F.kl_div(F.log_softmax(soft_predictions / T, 1), F.softmax(soft_labels / T, 1), reduction="batchmean") * T * T


def named_logits(logits_student, logits_teacher, temperature):
    return F.kl_div(F.log_softmax(logits_student / temperature, 1), F.softmax(logits_teacher / temperature, 1),
                    reduction="batchmean") * temperature**2


def named_outputs(outputs, teacher_outputs, T):
    return F.kl_div(F.log_softmax(outputs / T, 1), F.softmax(teacher_outputs / T, 1), reduction="batchmean") * T * T


def named_targets(outputs, targets, T):
    """`targets` is the only teacher candidate here: the teacher's logits."""
    return F.kl_div(F.log_softmax(outputs / T, 1), F.softmax(targets / T, 1), reduction="batchmean") * T * T


def targets_are_labels(outputs, targets, teacher_outputs, T, alpha=0.9):
    """`targets` next to `teacher_outputs`: the hard labels."""
    soft = F.kl_div(F.log_softmax(outputs / T, 1), F.softmax(teacher_outputs / T, 1), reduction="batchmean") * T * T
    return alpha * soft + (1 - alpha) * F.cross_entropy(outputs, targets)


def unknown_names(a, b, T):
    return F.kl_div(F.log_softmax(a / T, 1), F.softmax(b / T, 1), reduction="batchmean") * T * T


def two_students(outputs, logits, teacher, T):
    return F.kl_div(F.log_softmax(outputs / T, 1), F.softmax(teacher / T, 1), reduction="batchmean") * T * T


def reversed_roles(teacher_view, student_view, T):
    """The teacher first: only a word inside each name (a printed guess) or --student-arg/--teacher-arg says which is which."""
    return F.kl_div(F.log_softmax(student_view / T, 1), F.softmax(teacher_view / T, 1), reduction="batchmean") * T * T


# --- correct gradient, different value; hard-term changes ------------------------------------------


def soft_target_ce(student_logits, teacher_logits, T):
    """Soft-target cross-entropy = KL + H(teacher): same gradient as Hinton, value offset by T²·H."""
    p = F.softmax(teacher_logits / T, 1)
    return -(p * F.log_softmax(student_logits / T, 1)).sum(1).mean() * T * T


def label_smoothing(s, t, labels, T, alpha=0.5):
    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return alpha * soft + (1 - alpha) * F.cross_entropy(s, labels, label_smoothing=0.1)


def hard_on_softened(s, t, labels, T):
    """The hard CE on s/T: a change to the hard term; the soft term is right."""
    soft = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    return 0.5 * soft + 0.5 * F.cross_entropy(s / T, labels)


def fixed_T1(y_s, y_t):
    """T = 1 lives inside; any power of T is 1 there."""
    return F.kl_div(F.log_softmax(y_s, 1), F.softmax(y_t, 1), reduction="batchmean")


# --- sequences and dense prediction -----------------------------------------------------------------


def sequence_kd(student_logits, teacher_logits, T):
    """(B, L, K): summed over tokens, averaged over the batch ('batchmean' on a 3-D tensor)."""
    B, L, K = student_logits.shape
    kl = F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1), reduction="sum")
    return kl * T * T / B


def sequence_kd_token_mean(student_logits, teacher_logits, T):
    """(B, L, K): averaged over every token."""
    B, L, K = student_logits.shape
    s, t = student_logits.reshape(B * L, K), teacher_logits.reshape(B * L, K)
    return F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T


def dense_kd(student_logits, teacher_logits, T):
    """(B, K, H, W): class axis 1, averaged over pixels and the batch."""
    B, K, H, W = student_logits.shape
    kl = F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="sum")
    return kl * T * T / (B * H * W)


# --- non-finite results and crashes ------------------------------------------------------------------


def log_of_softmax(s, t, T):
    """log(softmax(.)) underflows to -inf for logits far apart: NaN/inf at extreme logits."""
    p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
    return (p * (torch.log(p) - torch.log(q))).sum(1).mean() * T * T


def returns_inf(s, t, T):
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
    return kl * T * T / (t.sum() * 0)


def raises(student_logits, teacher_logits, T):
    raise RuntimeError("shapes do not match the config")


def pushed_away(y_s, y_t):
    """Negated KL with T fixed inside: the multiple is negative, so T's exponent cannot be read."""
    return -F.kl_div(F.log_softmax(y_s / TEMP, 1), F.softmax(y_t / TEMP, 1), reduction="batchmean") * TEMP**2


def sequence_wrong_axis(student_logits, teacher_logits, T):
    """(B, L, K) but softmax over dim 1 (the tokens): a real bug for sequence logits."""
    return F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="batchmean") * T * T


def sequence_summed_over_batch(student_logits, teacher_logits, T):
    return F.kl_div(F.log_softmax(student_logits / T, -1), F.softmax(teacher_logits / T, -1), reduction="sum") * T * T


# --- names that contain the role (a word inside the name; each placement is a printed guess) ---------


def keras_style(y_pred_student, y_pred_teacher, temperature=3.0):
    """Names from Keras' Distiller example, ported to PyTorch."""
    soft = F.kl_div(F.log_softmax(y_pred_student / temperature, 1), F.softmax(y_pred_teacher / temperature, 1),
                    reduction="batchmean")
    return soft * temperature**2


def camel_case(studentLogits, teacherLogits, kdTemp=4.0):  # noqa: N803 (as written in the wild)
    return F.kl_div(F.log_softmax(studentLogits / kdTemp, 1), F.softmax(teacherLogits.detach() / kdTemp, 1),
                    reduction="batchmean") * kdTemp**2


def distill_with_labels(stu_out, tea_out, gt_label, kd_temp=4.0, kd_alpha=0.9):
    soft = F.kl_div(F.log_softmax(stu_out / kd_temp, 1), F.softmax(tea_out / kd_temp, 1), reduction="batchmean")
    return kd_alpha * soft * kd_temp**2 + (1 - kd_alpha) * F.cross_entropy(stu_out, gt_label)


def two_student_views(student_view, student_view_aug, teacher_view, T):
    """Two student views (consistency KD): the names cannot say which one the doctor should vary."""
    log_q = F.log_softmax(student_view / T, 1)
    return F.kl_div(log_q, F.softmax(teacher_view / T, 1), reduction="batchmean") * T * T + 0 * student_view_aug.sum()


# --- not a KL divergence at all ---------------------------------------------------------------------


def mse_soft_targets(outputs, labels, teacher_outputs, T=4.0, alpha=0.9):
    """MSE between softened probabilities plus the hard CE: a different loss, not a KLDivLoss input mistake."""
    soft = F.mse_loss(F.softmax(outputs / T, dim=1), F.softmax(teacher_outputs.detach() / T, dim=1))
    return alpha * soft + (1 - alpha) * F.cross_entropy(outputs, labels)


def js_kd(student_logits, teacher_logits, T):
    p, q = F.softmax(teacher_logits / T, 1), F.softmax(student_logits / T, 1)
    m = 0.5 * (p + q)
    return 0.5 * (F.kl_div(m.log(), p, reduction="batchmean") + F.kl_div(m.log(), q, reduction="batchmean"))


def cosine_kd(student_logits, teacher_logits, T=1.0):
    p, q = F.softmax(teacher_logits / T, 1), F.softmax(student_logits / T, 1)
    return (1 - F.cosine_similarity(q, p, dim=1)).mean()


# --- correct, but not finite at very large logits --------------------------------------------------


def distributions_kl(student_logits, teacher_logits, T):
    """torch.distributions: inf once softmax(student/T) underflows to 0 (|logit/T| in the hundreds in float32)."""
    kl = kl_divergence(Categorical(logits=teacher_logits / T), Categorical(logits=student_logits / T))
    return kl.mean() * T * T


# --- sequence logits passed without --shape ---------------------------------------------------------


def llm_token_kd(student_logits, teacher_logits, T=2.0):
    """(batch, seq, vocab) from a causal LM: softmax over dim=2, averaged over every token."""
    kl = F.kl_div(F.log_softmax(student_logits / T, dim=2), F.softmax(teacher_logits / T, dim=2), reduction="none")
    return kl.sum(2).mean() * T * T

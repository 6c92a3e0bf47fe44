"""Recipe.start: the one function that says where and how each recipe re-trains (pure, no I/O)."""

import pytest

from kdt.tickets import recipes
from kdt.train import losses
from kdt.train import optim

THETA_0, THETA_K, TRAINED, FRESH = (recipes.Weights(name, None) for name in
                                    ("theta_0", "theta_k", "trained", "fresh"))
SCHEDULE = optim.ScheduleSpec(name="step", learning_rate=0.1, num_steps=100, milestones=(50,))
LOSS = losses.LossConfig(kd_stop_step=80)
BUDGET = recipes.Budget(num_steps=100, rewind_step=10)


def _start(name, control="lth", budget=BUDGET):
  return recipes.RECIPES[name].start(
      theta_0=THETA_0, theta_k=THETA_K, trained=TRAINED, fresh=lambda: FRESH, schedule=SCHEDULE,
      loss=LOSS, budget=budget, control=recipes.RECIPES[control])


@pytest.mark.parametrize("name,weights,steps,kd", [
    ("lth", THETA_0, (0, 100), False), ("rewind", THETA_K, (10, 100), False),
    ("lr_rewind", TRAINED, (10, 100), False), ("kd", THETA_0, (0, 100), True),
    ("kd_rewind", THETA_K, (10, 100), True), ("kd_lr_rewind", TRAINED, (10, 100), True),
    ("finetune", TRAINED, (0, 90), False), ("pf_liu", TRAINED, (0, 100), False)])
def test_each_recipe_starts_where_its_paper_says(name, weights, steps, kd):
  start = _start(name)
  assert start.weights is weights and (start.start_step, start.end_step) == steps
  assert start.kd == kd and (start.loss.kd_stop_step == 80) == kd   # plain CE without KD
  if name == "finetune":  # Renda et al.: constant final LR for T - k steps
    assert start.schedule == optim.ScheduleSpec("constant", learning_rate=pytest.approx(0.01),
                                                num_steps=90)
  else:
    assert start.schedule == SCHEDULE


def test_random_reinit_trains_the_budget_of_the_ticket_it_controls():
  """open_lth's randomly_reinitialize branch starts at the control's step: k for a rewound ticket."""
  assert (_start("random_reinit", "lth").start_step, _start("random_reinit", "lth").end_step) == (0, 100)
  rewound = _start("random_reinit", "rewind")
  assert rewound.weights is FRESH and (rewound.start_step, rewound.end_step) == (10, 100)
  zero = _start("random_reinit", "rewind", recipes.Budget(100, 10, random_reinit_from_zero=True))
  assert (zero.start_step, zero.end_step) == (0, 100)
  # random_prune copies the control's weights and schedule
  assert _start("random_prune", "rewind").weights is THETA_K


def test_pf_liu_restarts_the_dense_schedule_for_the_tickets_budget():
  """Liu et al.'s pruning & fine-tuning: trained weights, the ticket's (lth's) T steps, the dense
  schedule from step 0 (its large learning rate), unlike Renda's constant final-LR finetune."""
  pf, ticket = _start("pf_liu"), _start("lth")
  assert pf.weights is TRAINED
  assert pf.end_step - pf.start_step == ticket.end_step - ticket.start_step == 100
  assert pf.schedule == SCHEDULE and float(pf.schedule.make()(pf.start_step)) == pytest.approx(0.1)
  assert float(_start("finetune").schedule.make()(0)) == pytest.approx(0.01)

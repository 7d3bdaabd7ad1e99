# The warm runners (the `worker` service, services.tf) scale out on Prefect's queue
# depth: each runner executes one flow run at a time with its imports and model
# already loaded, so more files at once means more tasks, each with its own memory
# limit (one OOM kill takes one run, which the reconciler re-drives).
#
# The queue is QueuedFlowRuns: runs of the deployments that are due and that no
# runner has taken, published every minute by each runner from a thread of its own
# (so it is reported while every runner is busy). Step scaling: a few queued runs
# add one task, more add two or four, up to worker_max_count; ten minutes with
# nothing queued remove one task at a time, down to worker_min_count. A task busy
# with a run is protected from scale-in (the runner asks the ECS agent while it
# runs), so scaling in never cuts a run short. A new task serves after about a
# minute or two (image pull, imports, model load): the burst waits that long for it.
# worker_max_count = worker_min_count: a fixed number of runners, none of this.

locals {
  runner_scaling_id = "service/${module.ecs.cluster_name}/${module.ecs.service_names["worker"]}"
  runners_scale     = var.worker_max_count > var.worker_min_count ? 1 : 0
}

resource "aws_appautoscaling_target" "runners" {
  count = local.runners_scale

  service_namespace  = "ecs"
  resource_id        = local.runner_scaling_id
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.worker_min_count
  max_capacity       = var.worker_max_count
}

resource "aws_appautoscaling_policy" "runners_out" {
  count = local.runners_scale

  name               = "${local.name}-runners-out"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.runners[0].service_namespace
  resource_id        = aws_appautoscaling_target.runners[0].resource_id
  scalable_dimension = aws_appautoscaling_target.runners[0].scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = 60
    metric_aggregation_type = "Maximum"

    # Bounds are relative to the alarm's threshold (1 queued run).
    step_adjustment {
      metric_interval_lower_bound = 0
      metric_interval_upper_bound = 4
      scaling_adjustment          = 1
    }

    step_adjustment {
      metric_interval_lower_bound = 4
      metric_interval_upper_bound = 14
      scaling_adjustment          = 2
    }

    step_adjustment {
      metric_interval_lower_bound = 14
      scaling_adjustment          = 4
    }
  }
}

resource "aws_appautoscaling_policy" "runners_in" {
  count = local.runners_scale

  name               = "${local.name}-runners-in"
  policy_type        = "StepScaling"
  service_namespace  = aws_appautoscaling_target.runners[0].service_namespace
  resource_id        = aws_appautoscaling_target.runners[0].resource_id
  scalable_dimension = aws_appautoscaling_target.runners[0].scalable_dimension

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = 300
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = -1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "runs_queued" {
  count = local.runners_scale

  alarm_name          = "${local.name}-runs-queued"
  alarm_description   = "Flow runs wait for a runner: add runner tasks (scaling, no message)."
  namespace           = local.ops_metrics_namespace
  metric_name         = "QueuedFlowRuns"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_appautoscaling_policy.runners_out[0].arn]
}

resource "aws_cloudwatch_metric_alarm" "runners_idle" {
  count = local.runners_scale

  alarm_name          = "${local.name}-runners-idle"
  alarm_description   = "No flow run has waited for 10 minutes: remove a runner task (scaling, no message)."
  namespace           = local.ops_metrics_namespace
  metric_name         = "QueuedFlowRuns"
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 10
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "missing"
  alarm_actions       = [aws_appautoscaling_policy.runners_in[0].arn]
}

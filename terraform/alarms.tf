# Alarms to the alerts topic (the e-mail subscription of module.sns): what nobody
# would otherwise notice. The Lambda's errors and its failure queue have their
# alarms in modules/s3-to-prefect-lambda; the runners' scaling alarms are in
# scaling.tf (they call the autoscaling, not people).
#
# CloudWatch has no metric for Prefect's flow runs or for how long a file waits
# in the bucket, so ChurnOps publishes them (code/churnops/monitoring/ops_metrics.py,
# on when OPS_METRICS_NAMESPACE is set, see services.tf): the reconciler, every
# minute, OldestInputSeconds and OldestProcessingSeconds; each file's flow run
# FailedFlowRuns (0 or 1); each runner QueuedFlowRuns.

locals {
  ops_metrics_namespace = "ChurnOps/${local.name}"
  alarm_topic_arns      = [module.sns.topic_arn]
  file_age_seconds      = var.alarm_file_age_minutes * 60
  db_free_storage_bytes = floor(var.db_allocated_storage * var.alarm_db_free_storage_percent / 100 * 1073741824)
}

# ------------------------------------------------------------------ files and runs
resource "aws_cloudwatch_metric_alarm" "file_waiting" {
  alarm_name          = "${local.name}-file-waiting-in-input"
  alarm_description   = "A file has waited more than ${var.alarm_file_age_minutes} minutes in data/input/ (or data/labels/) and no run took it: the trigger and the reconciler both missed it, every runner is busy, or S3 would not move it (archived to Glacier, denied: a 'gave up' alert and data/logs/<run>/<name>.log say so). See the Prefect UI and the worker's logs."
  namespace           = local.ops_metrics_namespace
  metric_name         = "OldestInputSeconds"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = local.file_age_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

resource "aws_cloudwatch_metric_alarm" "file_stuck_in_processing" {
  alarm_name          = "${local.name}-file-stuck-in-processing"
  alarm_description   = "A file dropped more than ${var.alarm_file_age_minutes} minutes ago is still in data/processing/: its runs keep failing on a dependency (database, MLflow, Evidently) or keep dying. Its log is data/logs/<run>/<name>.log."
  namespace           = local.ops_metrics_namespace
  metric_name         = "OldestProcessingSeconds"
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = local.file_age_seconds
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

# The reconciler publishes its file ages every minute, 0 when nothing waits: no
# data for 15 minutes means it does not run (no runner, or Prefect down).
resource "aws_cloudwatch_metric_alarm" "reconciler_silent" {
  alarm_name          = "${local.name}-reconciler-silent"
  alarm_description   = "The scheduled reconciler has not reported for 15 minutes: no runner serves reconcile/churnops, or the Prefect server is down. Stranded files are not re-driven meanwhile."
  namespace           = local.ops_metrics_namespace
  metric_name         = "OldestInputSeconds"
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = 3
  threshold           = 1
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

resource "aws_cloudwatch_metric_alarm" "failed_runs" {
  alarm_name          = "${local.name}-failed-flow-runs"
  alarm_description   = "A flow run failed on a dependency in the last 5 minutes; its file waits in data/processing/ and is retried by the reconciler. The run's message in the Prefect UI says why."
  namespace           = local.ops_metrics_namespace
  metric_name         = "FailedFlowRuns"
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

# ------------------------------------------------------------------ ECS task crashes
# A task stopped because a container exited on its own (a crash, an OOM kill: exit
# 137) or never started (image, secret or network errors). Deploys and scale-in
# stop tasks with other stop codes (ServiceSchedulerInitiated): no message then.
resource "aws_cloudwatch_event_rule" "task_crashes" {
  name        = "${local.name}-task-crashes"
  description = "ECS tasks of ${local.name} that crashed or failed to start."
  event_pattern = jsonencode({
    source        = ["aws.ecs"]
    "detail-type" = ["ECS Task State Change"]
    detail = {
      clusterArn = [module.ecs.cluster_arn]
      lastStatus = ["STOPPED"]
      stopCode   = ["EssentialContainerExited", "TaskFailedToStart"]
    }
  })
}

resource "aws_cloudwatch_event_target" "task_crashes" {
  rule = aws_cloudwatch_event_rule.task_crashes.name
  arn  = module.sns.topic_arn

  input_transformer {
    input_paths = {
      group  = "$.detail.group"
      task   = "$.detail.taskArn"
      code   = "$.detail.stopCode"
      reason = "$.detail.stoppedReason"
    }
    input_template = "\"ECS task <task> of <group> stopped (<code>): <reason>. A crashed runner's file is re-driven by the reconciler; its logs are under the log groups /ecs/${local.name}/.\""
  }
}

# ------------------------------------------------------------------ database
resource "aws_cloudwatch_metric_alarm" "db_cpu" {
  alarm_name          = "${local.name}-db-cpu"
  alarm_description   = "The database's CPU has averaged above ${var.alarm_db_cpu_percent}% for 15 minutes (db_instance_class ${var.db_instance_class}); burstable classes run out of CPU credits."
  namespace           = "AWS/RDS"
  metric_name         = "CPUUtilization"
  dimensions          = { DBInstanceIdentifier = module.rds.instance_id }
  statistic           = "Average"
  period              = 300
  evaluation_periods  = 3
  threshold           = var.alarm_db_cpu_percent
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

resource "aws_cloudwatch_metric_alarm" "db_storage" {
  alarm_name          = "${local.name}-db-free-storage"
  alarm_description   = "The database has less than ${var.alarm_db_free_storage_percent}% of its ${var.db_allocated_storage} GiB free: raise db_allocated_storage before writes fail."
  namespace           = "AWS/RDS"
  metric_name         = "FreeStorageSpace"
  dimensions          = { DBInstanceIdentifier = module.rds.instance_id }
  statistic           = "Minimum"
  period              = 300
  evaluation_periods  = 1
  threshold           = local.db_free_storage_bytes
  comparison_operator = "LessThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_topic_arns
  ok_actions          = local.alarm_topic_arns
}

# ------------------------------------------------------------------ who may publish
# The topic's policy: the account as before, CloudWatch alarms of this account, and
# the crash rule above. (The key that encrypts the topic lets both services use it, main.tf.)
data "aws_iam_policy_document" "alerts_topic" {
  statement {
    sid = "AccountManagesAndPublishes"
    actions = [
      "sns:GetTopicAttributes", "sns:SetTopicAttributes", "sns:AddPermission", "sns:RemovePermission",
      "sns:DeleteTopic", "sns:Subscribe", "sns:ListSubscriptionsByTopic", "sns:Publish",
    ]
    resources = [module.sns.topic_arn]

    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid       = "CloudWatchAlarms"
    actions   = ["sns:Publish"]
    resources = [module.sns.topic_arn]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${data.aws_partition.current.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:*"]
    }
  }

  statement {
    sid       = "TaskCrashRule"
    actions   = ["sns:Publish"]
    resources = [module.sns.topic_arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.task_crashes.arn]
    }
  }
}

resource "aws_sns_topic_policy" "alerts" {
  arn    = module.sns.topic_arn
  policy = data.aws_iam_policy_document.alerts_topic.json
}

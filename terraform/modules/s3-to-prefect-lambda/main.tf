# The S3 -> Prefect trigger: a container-image Lambda in the private subnets.
# It reaches the internal Prefect API (Cloud Map name) with the auth string it
# reads from Secrets Manager, and nothing else. Invocations that fail after the
# retries land in an encrypted SQS queue; alarms on the queue and on the
# function's errors go to the alerts topic.

data "aws_partition" "current" {}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "lambda" {
  name               = "${var.function_name}-role"
  assume_role_policy = data.aws_iam_policy_document.assume.json
}

resource "aws_cloudwatch_log_group" "lambda" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

# Its logs, the one secret, the failure queue; the key that encrypts the last two.
data "aws_iam_policy_document" "lambda" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }

  statement {
    sid       = "ReadPrefectAuthString"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.prefect_auth_secret_arn]
  }

  statement {
    sid       = "SendFailedInvocations"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.failures.arn]
  }

  statement {
    sid       = "UsePlatformKeyForSecretAndQueue"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "lambda" {
  name   = "trigger"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.lambda.json
}

# The network interfaces of a function in a VPC: the ENI actions of AWS's managed
# AWSLambdaVPCAccessExecutionRole, without its logs:* on every log group.
data "aws_iam_policy_document" "vpc_access" {
  # checkov:skip=CKV_AWS_111:The EC2 network-interface actions Lambda needs have no resource-level permissions.
  # checkov:skip=CKV_AWS_356:The EC2 network-interface actions Lambda needs have no resource-level permissions.
  statement {
    sid = "FunctionNetworkInterfaces"
    actions = [
      "ec2:CreateNetworkInterface",
      "ec2:DescribeNetworkInterfaces",
      "ec2:DescribeSubnets",
      "ec2:DeleteNetworkInterface",
      "ec2:AssignPrivateIpAddresses",
      "ec2:UnassignPrivateIpAddresses",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "vpc_access" {
  name   = "vpc-access"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.vpc_access.json
}

# ------------------------------------------------------------------ network
# Rules are separate resources: the tasks' group names this one in its ingress.
resource "aws_security_group" "lambda" {
  name        = "${var.function_name}-lambda"
  description = "The S3-to-Prefect Lambda: out to the Prefect API and Secrets Manager only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "prefect" {
  security_group_id            = aws_security_group.lambda.id
  description                  = "Prefect API (the prefect-server tasks)"
  ip_protocol                  = "tcp"
  from_port                    = var.prefect_port
  to_port                      = var.prefect_port
  referenced_security_group_id = var.prefect_security_group_id
}

resource "aws_vpc_security_group_egress_rule" "secrets_endpoint" {
  count = var.secretsmanager_endpoint ? 1 : 0

  security_group_id            = aws_security_group.lambda.id
  description                  = "Secrets Manager through its interface endpoint"
  ip_protocol                  = "tcp"
  from_port                    = 443
  to_port                      = 443
  referenced_security_group_id = aws_security_group.endpoint[0].id
}

resource "aws_vpc_security_group_egress_rule" "secrets_nat" {
  count = var.secretsmanager_endpoint ? 0 : 1

  security_group_id = aws_security_group.lambda.id
  description       = "Secrets Manager's regional endpoint through the subnets' NAT"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "endpoint" {
  count = var.secretsmanager_endpoint ? 1 : 0

  name        = "${var.function_name}-secretsmanager"
  description = "Secrets Manager interface endpoint: HTTPS from the Lambda and the other clients"
  vpc_id      = var.vpc_id

  # Private DNS sends every client in the VPC here, the ECS tasks included (their secrets).
  ingress {
    description     = "HTTPS from the Lambda and the ECS tasks"
    from_port       = 443
    to_port         = 443
    protocol        = "tcp"
    security_groups = concat([aws_security_group.lambda.id], var.endpoint_client_security_group_ids)
  }
}

resource "aws_vpc_endpoint" "secretsmanager" {
  count = var.secretsmanager_endpoint ? 1 : 0

  vpc_id              = var.vpc_id
  service_name        = "com.amazonaws.${var.region}.secretsmanager"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = var.subnet_ids
  security_group_ids  = [aws_security_group.endpoint[0].id]
  private_dns_enabled = true
}

# ------------------------------------------------------------------ function
resource "aws_lambda_function" "this" {
  # checkov:skip=CKV_AWS_116:Failed asynchronous invocations go to the on-failure destination (aws_lambda_function_event_invoke_config, the SQS queue), which keeps the request and the error; a DLQ would duplicate it.
  # checkov:skip=CKV_AWS_50:No X-Ray: one HTTP call per record, and each record's outcome is a JSON log line.
  # checkov:skip=CKV_AWS_272:Container image function; code signing applies to zip packages only.
  # checkov:skip=CKV_AWS_173:The environment holds no secret (API URL, deployment, prefix and the secret's ARN, not its value).
  function_name                  = var.function_name
  role                           = aws_iam_role.lambda.arn
  package_type                   = "Image"
  image_uri                      = var.image_uri
  architectures                  = ["x86_64"]
  timeout                        = var.timeout
  memory_size                    = var.memory_size
  reserved_concurrent_executions = var.reserved_concurrency

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.lambda.id]
  }

  environment {
    variables = merge(
      {
        PREFECT_API_URL                   = var.prefect_api_url
        PREFECT_API_AUTH_STRING_SECRET_ID = var.prefect_auth_secret_arn
        PREFECT_DEPLOYMENT                = var.prefect_deployment
      },
      var.extra_environment,
    )
  }

  depends_on = [
    aws_iam_role_policy.lambda,
    aws_iam_role_policy.vpc_access,
    aws_cloudwatch_log_group.lambda,
  ]
}

resource "aws_lambda_permission" "s3" {
  statement_id   = "AllowDropBucketInvoke"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.this.function_name
  principal      = "s3.amazonaws.com"
  source_arn     = var.bucket_arn
  source_account = var.bucket_account_id
}

# ------------------------------------------------------------------ failures
resource "aws_sqs_queue" "failures" {
  name                              = "${var.function_name}-failures"
  kms_master_key_id                 = var.kms_key_arn
  kms_data_key_reuse_period_seconds = 3600
  message_retention_seconds         = 1209600 # 14 days, the most SQS keeps
}

# S3 invokes asynchronously: two retries, then the event and its error go to the queue.
resource "aws_lambda_function_event_invoke_config" "this" {
  function_name                = aws_lambda_function.this.function_name
  maximum_retry_attempts       = 2
  maximum_event_age_in_seconds = var.maximum_event_age_seconds

  destination_config {
    on_failure {
      destination = aws_sqs_queue.failures.arn
    }
  }

  depends_on = [aws_iam_role_policy.lambda]
}

resource "aws_cloudwatch_metric_alarm" "failures" {
  alarm_name          = "${var.function_name}-failed-invocations"
  alarm_description   = "Files whose trigger failed after its retries: their events wait in ${aws_sqs_queue.failures.name}; the files stay in the drop folder until the reconciler takes them."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.failures.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = [var.alarm_topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "errors" {
  alarm_name          = "${var.function_name}-errors"
  alarm_description   = "The S3-to-Prefect Lambda raised (Prefect unreachable or its credential refused); see /aws/lambda/${var.function_name}."
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.this.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  threshold           = 0
  comparison_operator = "GreaterThanThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = [var.alarm_topic_arn]
  ok_actions          = [var.alarm_topic_arn]
}

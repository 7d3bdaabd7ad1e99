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

# Logs and nothing more: the function only calls the Prefect API over HTTPS.
data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "WriteOwnLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.lambda.arn}:*"]
  }
}

resource "aws_iam_role_policy" "logs" {
  name   = "logs"
  role   = aws_iam_role.lambda.id
  policy = data.aws_iam_policy_document.logs.json
}

resource "aws_lambda_function" "this" {
  # checkov:skip=CKV_AWS_117:Not in a VPC on purpose: the role may write logs and nothing more (no ENI permissions); it only calls the Prefect API.
  # checkov:skip=CKV_AWS_116:S3 invokes asynchronously and retries twice; failed files stay in data/input/ and are visible there.
  # checkov:skip=CKV_AWS_50:X-Ray tracing would need permissions beyond logs.
  # checkov:skip=CKV_AWS_272:Container image function; code signing applies to zip packages only.
  # checkov:skip=CKV_AWS_173:The environment holds no secret (API URL, deployment name, prefix); a customer key would need kms:Decrypt on the role.
  function_name                  = var.function_name
  role                           = aws_iam_role.lambda.arn
  package_type                   = "Image"
  image_uri                      = var.image_uri
  architectures                  = ["x86_64"]
  timeout                        = var.timeout
  memory_size                    = var.memory_size
  reserved_concurrent_executions = var.reserved_concurrency

  environment {
    variables = merge(
      {
        PREFECT_API_URL    = var.prefect_api_url
        PREFECT_DEPLOYMENT = var.prefect_deployment
        INPUT_PREFIX       = var.input_prefix
      },
      var.extra_environment,
    )
  }

  depends_on = [aws_iam_role_policy.logs, aws_cloudwatch_log_group.lambda]
}

resource "aws_lambda_permission" "s3" {
  statement_id   = "AllowDropBucketInvoke"
  action         = "lambda:InvokeFunction"
  function_name  = aws_lambda_function.this.function_name
  principal      = "s3.amazonaws.com"
  source_arn     = var.bucket_arn
  source_account = var.bucket_account_id
}

#!/usr/bin/env bash
# Build the sftprep Flex Template and launch one job on Dataflow.
#
#   PROJECT=my-project REGION=europe-west4 BUCKET=my-bucket \
#   SERVICE_ACCOUNT=sftprep@my-project.iam.gserviceaccount.com \
#   deploy/dataflow/launch.sh gs://my-bucket/raw/*.jsonl gs://my-bucket/sft/v1 [extra --parameters]
#
# Needs gcloud (authenticated), Artifact Registry repository "$REPO", and the service account
# with roles/dataflow.worker and read/write on the bucket.
set -euo pipefail
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
: "${SERVICE_ACCOUNT:?set SERVICE_ACCOUNT}"
REPO=${REPO:-sftprep}
TAG=${TAG:-$(git rev-parse --short HEAD 2>/dev/null || echo latest)}
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/sftprep:${TAG}"
SPEC="gs://${BUCKET}/templates/sftprep-${TAG}.json"
INPUT=${1:?input glob}
OUTPUT=${2:?output directory}
shift 2

cd "$(dirname "$0")/../.."
docker build -f deploy/dataflow/Dockerfile -t "$IMAGE" .
docker push "$IMAGE"

gcloud dataflow flex-template build "$SPEC" --project "$PROJECT" \
  --image "$IMAGE" --sdk-language PYTHON --metadata-file deploy/dataflow/metadata.json

gcloud dataflow flex-template run "sftprep-$(date -u +%Y%m%d-%H%M%S)" \
  --project "$PROJECT" --region "$REGION" --template-file-gcs-location "$SPEC" \
  --service-account-email "$SERVICE_ACCOUNT" \
  --temp-location "gs://${BUCKET}/tmp" --staging-location "gs://${BUCKET}/staging" \
  --worker-machine-type "${MACHINE_TYPE:-n2-standard-4}" --max-workers "${MAX_WORKERS:-20}" \
  --additional-experiments use_runner_v2 \
  --parameters "sdk_container_image=${IMAGE}" \
  --parameters "input=${INPUT},output=${OUTPUT},publish=true,skip_if_unchanged=true" "$@"

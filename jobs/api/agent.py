"""`/api/agent/`: what a node agent asks of the control plane about the executions it
runs, with its node credential (`Authorization: Node <key>`): claim one, report
successes in batches (and take work onto the room they free), report any other
outcome, ask which it should cancel, and ship their output.

A credential acts only on executions allocated to its node: a token or execution of
another node answers 404, as another team's job does for a user, and changes nothing
(the whole batch, when one of a batch is another node's).
Each view calls the same service the agent called when it wrote to PostgreSQL itself.

Not throttled: an agent's traffic grows with the jobs it runs, and only the platform's
own agents hold node credentials.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from common.schema import ErrorSerializer
from common.serializers import StrictSerializer
from nodes.authentication import IsNodeAgent, NodeCredentialAuthentication

from ..accounting import ClaimedExecution, ExecutionOfAnotherNode, Success
from ..models import JobExecution
from ..scheduling.freed_room import successes_report
from ..selectors import (
    execution_running_on_node,
    execution_stop_requests,
    execution_tokens_succeeded_on_node,
)
from ..services.executions import execution_claim, execution_finish
from ..services.logs import LogChunk, log_chunks_append

MAX_BATCH = 10_000
MAX_TOKEN = 100
MAX_GPU_INDEX = 1023


class ExecutionToRunSerializer(serializers.Serializer):
    """All a node needs to run an execution (`jobs.agent.runner.ExecutionToRun`)."""

    execution_id = serializers.IntegerField(source="id")
    token = serializers.CharField()
    attempt = serializers.IntegerField()
    job_id = serializers.IntegerField()
    name = serializers.CharField(source="job.name")
    kind = serializers.CharField(source="job.kind")
    command = serializers.JSONField(source="job.command")
    callable = serializers.CharField(source="job.callable")
    env = serializers.JSONField(source="job.env")
    parameters = serializers.JSONField(source="job.parameters")
    cpu_millis = serializers.IntegerField(source="job.cpu_millis")
    memory_mb = serializers.IntegerField(source="job.memory_mb")
    gpu = serializers.IntegerField(source="job.gpu")
    timeout_seconds = serializers.IntegerField(source="job.timeout_seconds", allow_null=True)
    cpu_time_limit_seconds = serializers.IntegerField(
        source="job.cpu_time_limit_seconds", allow_null=True
    )
    task_index = serializers.IntegerField()
    tasks = serializers.IntegerField(source="job.tasks")
    task_nodes = serializers.CharField(help_text="Its gang's node addresses, in task order.")


# ExecutionToRunSerializer's fields: a ClaimedExecution has them under the same names.
RUN_FIELDS = tuple(ExecutionToRunSerializer().fields)


def claimed_to_run(claimed: ClaimedExecution) -> dict:
    """What ExecutionToRunSerializer answers for an execution, read off the plain values
    of one claimed on freed room: a batch of successes claims one for each thread."""
    return {name: getattr(claimed, name) for name in RUN_FIELDS}


class TokenSerializer(StrictSerializer):
    token = serializers.CharField(max_length=MAX_TOKEN, help_text="e.g. job-12-attempt-1")


class ClaimSerializer(TokenSerializer):
    resume = serializers.BooleanField(
        default=False,
        help_text=(
            "The agent sends its claim again, not knowing whether the first got through "
            "(its answer was lost): an execution already running on this node is answered "
            "as claimed."
        ),
    )


def gpu_ids_field():
    return serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=MAX_GPU_INDEX),
        max_length=MAX_GPU_INDEX + 1,
        default=list,
        help_text="The node's GPU devices (indices) the attempt ran on.",
    )


class FinishSerializer(StrictSerializer):
    token = serializers.CharField(max_length=MAX_TOKEN)
    exit_code = serializers.IntegerField(allow_null=True, min_value=-(2**31), max_value=2**31 - 1)
    error = serializers.CharField(allow_blank=True, default="")
    log_path = serializers.CharField(allow_blank=True, default="")
    log_tail = serializers.CharField(allow_blank=True, default="", trim_whitespace=False)
    cancelled = serializers.BooleanField(default=False)
    preempted = serializers.BooleanField(
        default=False, help_text="The agent stopped it because the scheduler preempted it."
    )
    gpu_ids = gpu_ids_field()


class SuccessSerializer(StrictSerializer):
    token = serializers.CharField(max_length=MAX_TOKEN)
    log_path = serializers.CharField(allow_blank=True, default="")
    log_tail = serializers.CharField(allow_blank=True, default="", trim_whitespace=False)
    gpu_ids = gpu_ids_field()


class SuccessesSerializer(StrictSerializer):
    successes = SuccessSerializer(many=True, max_length=MAX_BATCH, allow_empty=False)
    claim = serializers.IntegerField(
        min_value=0,
        default=0,
        help_text="How many jobs placed on the freed room to claim for the agent at once.",
    )
    fill_freed_room = serializers.BooleanField(
        default=True, help_text="False when the agent shuts down: its room is the scheduler's."
    )
    resume = serializers.BooleanField(
        default=False,
        help_text=(
            "The agent sends the batch again, not knowing whether the first got through: "
            "successes already recorded are answered as ended."
        ),
    )


class TokensSerializer(StrictSerializer):
    tokens = serializers.ListField(
        child=serializers.CharField(max_length=MAX_TOKEN), max_length=MAX_BATCH
    )


class LogChunkSerializer(StrictSerializer):
    execution_id = serializers.IntegerField(min_value=1, max_value=2**63 - 1)
    seq = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
    first_line = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    offset = serializers.IntegerField(min_value=0, max_value=2**63 - 1)
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)


class LogChunksSerializer(StrictSerializer):
    chunks = LogChunkSerializer(many=True, max_length=MAX_BATCH, default=list)
    cuts = serializers.DictField(
        child=serializers.IntegerField(min_value=0, max_value=2**31 - 1),
        default=dict,
        help_text="{execution id: seq}: delete the attempt's chunks below seq (its cap).",
    )

    def validate_cuts(self, cuts):
        try:
            cuts = {int(execution_id): below for execution_id, below in cuts.items()}
        except ValueError:
            raise serializers.ValidationError("Keys are execution ids.") from None
        if any(not 0 < execution_id < 2**63 for execution_id in cuts):
            raise serializers.ValidationError("Keys are execution ids.")
        return cuts


class FinishAnswerSerializer(serializers.Serializer):
    status = serializers.CharField(
        allow_null=True, help_text="As recorded; null when ignored (not running any more)."
    )


class PreemptRequestSerializer(serializers.Serializer):
    token = serializers.CharField()
    grace_seconds = serializers.IntegerField(help_text="Between SIGTERM and SIGKILL.")
    preempted_by = serializers.IntegerField(allow_null=True, help_text="The job it makes room for.")


class StopRequestsSerializer(serializers.Serializer):
    tokens = serializers.ListField(
        child=serializers.CharField(), help_text="Cancel these: someone asked to."
    )
    preempt = PreemptRequestSerializer(many=True, help_text="Stop these: preempted.")
    taken_away = serializers.ListField(
        child=serializers.CharField(),
        help_text=(
            "Stop these and report nothing for them: they were failed over (the node was "
            "lost) and run elsewhere."
        ),
    )


class SuccessesAnswerSerializer(serializers.Serializer):
    ended = serializers.ListField(child=serializers.CharField())
    claimed = ExecutionToRunSerializer(many=True)


NOT_THIS_NODES = OpenApiResponse(
    ErrorSerializer, description="An execution of another node, or this node not registered."
)


class AgentView(APIView):
    authentication_classes = [NodeCredentialAuthentication]
    permission_classes = [IsNodeAgent]
    throttle_classes = []

    def node_id(self) -> int:
        """The id of the caller's node; 404 while it is not registered."""
        node_id = self.request.auth.node_id  # found with the credential
        if node_id is None:
            raise NotFound("This node is not registered; register it first.")
        return node_id

    @staticmethod
    def own(node_id: int, *, tokens=(), execution_ids=(), known: bool = False) -> None:
        """404 if any of these executions is allocated to another node (or, with `known`,
        is not this node's at all). Executions that do not exist (a job deleted while it
        ran) are otherwise left to the service, which ignores them, so that one of them
        does not hold back the rest of a batch."""
        executions = JobExecution.objects.all()
        if tokens:
            executions = executions.filter(token__in=set(tokens))
        elif execution_ids:
            executions = executions.filter(id__in=set(execution_ids))
        else:
            return
        if known:
            if executions.filter(node_id=node_id).count() != len(set(tokens or execution_ids)):
                raise NotFound("No such execution on this node.")
        elif executions.exclude(node_id=node_id).exists():
            raise NotFound("No such execution on this node.")

    def valid(self, serializer_class) -> dict:
        data = serializer_class(data=self.request.data)
        data.is_valid(raise_exception=True)
        return data.validated_data


class ClaimView(AgentView):
    @extend_schema(
        request=ClaimSerializer,
        responses={
            200: ExecutionToRunSerializer,
            404: NOT_THIS_NODES,
            409: OpenApiResponse(ErrorSerializer, description="Claimed or ended already."),
        },
    )
    def post(self, request):
        """Claim a reserved execution for this node (it is `running` from now on); 409
        when it is claimed or ended already (a duplicate or stale message)."""
        data = self.valid(ClaimSerializer)
        token = data["token"]
        node_id = self.node_id()
        # The claim takes only an execution reserved for this node; when it takes none,
        # another node's or an unknown token is a 404, this node's a 409 (or, resuming,
        # the execution it already runs).
        execution = execution_claim(token=token, node_id=node_id)
        if execution is None:
            self.own(node_id, tokens=[token], known=True)
        if execution is None and data["resume"]:
            execution = execution_running_on_node(token=token, node_id=node_id)
        if execution is None:
            return Response(
                {"detail": "Not reserved for this node: claimed or ended already."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(ExecutionToRunSerializer(execution).data)


class FinishView(AgentView):
    @extend_schema(
        request=FinishSerializer, responses={200: FinishAnswerSerializer, 404: NOT_THIS_NODES}
    )
    def post(self, request):
        """Record how a running execution ended (any outcome); `status` is null when it
        was not running any more (failed over, or reported already): nothing changed."""
        data = self.valid(FinishSerializer)
        self.own(self.node_id(), tokens=[data["token"]], known=True)
        return Response({"status": execution_finish(**data)})


class SuccessesView(AgentView):
    @extend_schema(
        request=SuccessesSerializer,
        responses={200: SuccessesAnswerSerializer, 404: NOT_THIS_NODES},
    )
    def post(self, request):
        """End a batch of successes and place waiting jobs on the room they freed, in
        one transaction; answers which it ended (the others are for `finish/`) and the
        executions claimed for the agent to run next."""
        data = self.valid(SuccessesSerializer)
        node_id = self.node_id()
        successes = [Success(**item) for item in data["successes"]]
        try:  # the statement that ends them checks they are all this node's
            reported = successes_report(
                node_id=node_id,
                successes=successes,
                claim=data["claim"],
                fill_freed_room=data["fill_freed_room"],
            )
        except ExecutionOfAnotherNode:
            raise NotFound("No such execution on this node.") from None
        ended = reported.ended
        if data["resume"]:
            recorded = execution_tokens_succeeded_on_node(
                tokens=[s.token for s in successes], node_id=node_id
            )
            ended = sorted(set(ended) | set(recorded))
        return Response(
            {
                "ended": ended,
                "claimed": [claimed_to_run(claimed) for claimed in reported.claimed],
            }
        )


class CancelRequestsView(AgentView):
    @extend_schema(
        request=TokensSerializer, responses={200: StopRequestsSerializer, 404: NOT_THIS_NODES}
    )
    def post(self, request):
        """Which of these executions of this node belong to jobs someone asked to cancel
        (`tokens`), which the scheduler preempted, to stop after their grace (`preempt`),
        and which were taken away from it, failed over while it was unreachable
        (`taken_away`)."""
        tokens = self.valid(TokensSerializer)["tokens"]
        if not tokens:
            return Response({"tokens": [], "preempt": [], "taken_away": []})
        asked = execution_stop_requests(tokens=tokens, node_id=self.node_id())
        if asked is None:
            raise NotFound("No such execution on this node.")
        return Response(
            {"tokens": asked.cancel, "preempt": asked.preempt, "taken_away": asked.taken_away}
        )


class LogChunksView(AgentView):
    @extend_schema(request=LogChunksSerializer, responses={204: None, 404: NOT_THIS_NODES})
    def post(self, request):
        """Store output of this node's attempts, and cut each attempt's oldest chunks."""
        data = self.valid(LogChunksSerializer)
        chunks = [LogChunk(**chunk) for chunk in data["chunks"]]
        cuts = data["cuts"]
        if chunks or cuts:
            self.own(self.node_id(), execution_ids={c.execution_id for c in chunks} | set(cuts))
            log_chunks_append(chunks=chunks, cuts=cuts)
        return Response(status=status.HTTP_204_NO_CONTENT)

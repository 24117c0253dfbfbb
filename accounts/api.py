"""`/api/auth/`: log in for a token, log out, who am I, the caller's tokens; and
`/api/audit/`, the audit log for team admins."""

from datetime import timedelta

import django_filters
from django.conf import settings
from django.contrib.auth import authenticate, logout
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import AllowAny, BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from common.filters import IsoDateTimeFilter
from common.serializers import StrictSerializer

from .audit import audit_describe
from .models import ApiToken, AuditEvent, Role
from .selectors import api_token_list_visible, audit_event_list_visible, team_list_administered
from .services import api_token_issue, api_token_revoke
from .throttling import AnonThrottle, LoginThrottle


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False, write_only=True)


class LoginAnswerSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The key, for `Authorization: Token <key>`.")
    expires_at = serializers.DateTimeField()
    username = serializers.CharField()


class MembershipSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    role = serializers.ChoiceField(choices=Role.choices)


class MeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    username = serializers.CharField()
    email = serializers.EmailField(allow_blank=True)
    is_staff = serializers.BooleanField()
    teams = MembershipSerializer(many=True)


@extend_schema(
    request=LoginSerializer,
    responses={200: LoginAnswerSerializer},
    examples=[
        OpenApiExample(
            "Log in",
            value={"username": "alice", "password": "correct horse battery"},
            request_only=True,
        )
    ],
)
class LoginView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonThrottle, LoginThrottle]

    def post(self, request):
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(request, **serializer.validated_data)
        if user is None:
            audit_describe(
                request,
                action="auth.login_failed",
                change={"username": serializer.validated_data["username"]},
                record_failure=True,
            )
            return Response(
                {"non_field_errors": ["Unable to log in with the given username and password."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        expires_at = timezone.now() + timedelta(days=settings.API_LOGIN_TOKEN_DAYS)
        issued = api_token_issue(user=user, name="login", expires_at=expires_at)
        audit_describe(request, target=issued.token, actor=user, change={})
        return Response(
            {"token": issued.key, "expires_at": expires_at, "username": user.username},
            status=status.HTTP_200_OK,
        )


@extend_schema(
    request=None,
    responses={204: None},
    description="Revokes the token used (or ends the browser's session).",
)
class LogoutView(APIView):
    def post(self, request):
        if isinstance(request.auth, ApiToken):
            api_token_revoke(token=request.auth)
            audit_describe(request, target=request.auth)
        else:
            # A browser's session: ending it is its logout.
            logout(request._request)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(responses=MeSerializer)
class MeView(APIView):
    def get(self, request):
        user = request.user
        memberships = user.memberships.select_related("team").order_by("team__name")
        return Response(
            {
                "id": user.id,
                "username": user.username,
                "email": user.email,
                "is_staff": user.is_staff,
                "teams": [
                    {"slug": m.team.slug, "name": m.team.name, "role": m.role} for m in memberships
                ],
            }
        )


# --- Tokens ----------------------------------------------------------------------------


class TokenSerializer(serializers.ModelSerializer):
    """A token as listed: never its secret nor its digest."""

    user = serializers.CharField(source="user.username")

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "user",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
        ]


class IssuedTokenSerializer(TokenSerializer):
    token = serializers.SerializerMethodField(help_text="The key; shown only in this answer.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]

    def get_token(self, token) -> str:
        return self.context["key"]


class TokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=100, help_text="e.g. nightly-reports")
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, default=None, help_text="Leave out for no expiry."
    )

    def validate_expires_at(self, value):
        if value is not None and value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value


@extend_schema_view(
    destroy=extend_schema(responses={204: None}),
    create=extend_schema(
        request=TokenCreateSerializer,
        responses={201: IssuedTokenSerializer},
        examples=[
            OpenApiExample(
                "A token for a nightly job",
                value={"name": "nightly-reports", "expires_at": "2030-01-01T00:00:00Z"},
                request_only=True,
            )
        ],
    ),
)
class TokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Your API tokens (staff: everyone's). Creating one shows its key once; deleting
    one revokes it (it stays listed, with `revoked_at`)."""

    serializer_class = TokenSerializer
    queryset = ApiToken.objects.none()  # the schema's model; requests use get_queryset

    def get_queryset(self):
        return api_token_list_visible(user=self.request.user)

    def create(self, request):
        data = TokenCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        issued = api_token_issue(user=request.user, **data.validated_data)
        audit_describe(request, target=issued.token)
        answer = IssuedTokenSerializer(issued.token, context={"key": issued.key})
        return Response(answer.data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        api_token_revoke(token=instance)
        audit_describe(self.request, target=instance)


# --- Audit -----------------------------------------------------------------------------


class IsTeamAdminOrStaff(BasePermission):
    message = "Only team admins and staff may read the audit log."

    def has_permission(self, request, view):
        return team_list_administered(user=request.user).exists()


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_name")
    team = serializers.CharField(source="team.slug", default=None)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "at",
            "actor",
            "token",
            "action",
            "outcome",
            "status_code",
            "object_type",
            "object_id",
            "object_repr",
            "team",
            "remote_addr",
            "method",
            "path",
            "change",
        ]


class AuditEventFilter(django_filters.FilterSet):
    team = django_filters.CharFilter(field_name="team__slug")
    action = django_filters.CharFilter()
    actor = django_filters.CharFilter(field_name="actor_name")
    after = IsoDateTimeFilter(field_name="at", lookup_expr="gte")
    before = IsoDateTimeFilter(field_name="at", lookup_expr="lt")


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """What was changed, by whom, from where: staff see every event, a team admin those
    of their teams. Filters `team`, `action`, `actor`, `after`, `before`."""

    serializer_class = AuditEventSerializer
    queryset = AuditEvent.objects.none()  # the schema's model; requests use get_queryset
    filterset_class = AuditEventFilter
    permission_classes = [IsAuthenticated, IsTeamAdminOrStaff]

    def get_queryset(self):
        return audit_event_list_visible(user=self.request.user)

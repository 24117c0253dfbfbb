"""`/api/auth/`: log in for a token, log out, who am I."""

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate
from django.utils import timezone
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import ApiToken
from .services import api_token_issue, api_token_revoke


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=256, trim_whitespace=False, write_only=True)


class LoginView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        serializer = LoginSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        user = authenticate(request, **serializer.validated_data)
        if user is None:
            return Response(
                {"non_field_errors": ["Unable to log in with the given username and password."]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        expires_at = timezone.now() + timedelta(days=settings.API_LOGIN_TOKEN_DAYS)
        issued = api_token_issue(user=user, name="login", expires_at=expires_at)
        return Response(
            {"token": issued.key, "expires_at": expires_at, "username": user.username},
            status=status.HTTP_200_OK,
        )


class LogoutView(APIView):
    def post(self, request):
        if isinstance(request.auth, ApiToken):
            api_token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)


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

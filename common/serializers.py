"""Serializer behaviour shared by every app's API."""

from collections.abc import Mapping

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo ("cpus") is an error, not a default."""

    def to_internal_value(self, data):
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)


class ResourceAmountsSerializer(serializers.Serializer):
    """Amounts of each resource as answered: CPU in cores, memory in MiB, GPUs."""

    cpu = serializers.FloatField(help_text="CPU cores, e.g. 0.5")
    memory_mb = serializers.IntegerField()
    gpu = serializers.IntegerField()


class ResourceLimitsSerializer(serializers.Serializer):
    """Limits per resource as answered; null is no limit."""

    cpu = serializers.FloatField(allow_null=True, help_text="CPU cores, e.g. 0.5")
    memory_mb = serializers.IntegerField(allow_null=True)
    gpu = serializers.IntegerField(allow_null=True)


class ResourceUsageSerializer(serializers.Serializer):
    """What jobs really use, as their node's agent sampled it; null when it did not say."""

    cpu = serializers.FloatField(
        allow_null=True, help_text="CPU time per second, in cores, e.g. 1.5"
    )
    memory_mb = serializers.IntegerField(allow_null=True, help_text="Resident memory, in MiB")

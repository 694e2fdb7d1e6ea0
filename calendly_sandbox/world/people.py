"""Organizations and their users: unique emails, unique slugs, plans and roles."""

from __future__ import annotations

import re

from calendly_sandbox.config import PayloadStyle
from calendly_sandbox.errors import ApiError
from calendly_sandbox.model import Organization, Plan, Role, User, new_id

from .context import Context


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "user"


class People:
    """Every organization and user of the sandbox."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.organizations: dict[str, Organization] = {}
        self.users: dict[str, User] = {}

    def create_organization(self, name: str, org_id: str | None = None) -> Organization:
        org = Organization(id=org_id or new_id(), name=name, created_at=self.context.clock.now())
        self.organizations[org.id] = org
        return org

    def create_user(
        self,
        *,
        name: str,
        email: str,
        plan: Plan = "standard",
        organization_id: str | None = None,
        role: Role | None = None,
        timezone: str = "Europe/Berlin",
        user_id: str | None = None,
    ) -> User:
        """A new user; without an organization, one of their own that they own.

        Raises ApiError 409 for a taken email and 404 for an unknown organization.
        """
        if self.user_by_email(email) is not None:
            raise ApiError(409, f"A user with email {email} already exists")
        if organization_id is None:
            organization_id = self.create_organization(f"{name}'s organization").id
            role = role or "owner"
        elif organization_id not in self.organizations:
            raise ApiError(404, f"Organization {organization_id} does not exist")
        now = self.context.clock.now()
        base_slug = slugify(name)
        slug, n = base_slug, 1
        while any(u.slug == slug for u in self.users.values()):
            n += 1
            slug = f"{base_slug}-{n}"
        user = User(
            id=user_id or new_id(),
            name=name,
            email=email,
            slug=slug,
            timezone=timezone,
            organization_id=organization_id,
            role=role or "user",
            plan=plan,
            created_at=now,
            updated_at=now,
        )
        self.users[user.id] = user
        return user

    def change_user(
        self,
        user: User,
        *,
        plan: Plan | None,
        role: Role | None,
        payload_style: PayloadStyle | None = None,
    ) -> None:
        """Change the plan, role or deliveries' shape given (None keeps it); the user counts
        as updated either way."""
        if plan is not None:
            user.plan = plan
        if payload_style is not None:
            user.payload_style = payload_style
        if role is not None:
            user.role = role
        user.updated_at = self.context.clock.now()

    def user_by_email(self, email: str) -> User | None:
        wanted = email.strip().lower()
        return next((u for u in self.users.values() if u.email.lower() == wanted), None)

    def get_user(self, user_id: str) -> User:
        """The user; raises ApiError 404."""
        user = self.users.get(user_id)
        if user is None:
            raise ApiError(404)
        return user

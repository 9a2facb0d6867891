# ruff: noqa: PT009  (Django test cases: unittest assertions, run by Django's runner)
"""Run by Django's own test runner inside scenario.py: test database, TestCase rollback."""

from __future__ import annotations

from django.conf import settings
from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

from djproject.shop.models import Item


class RollbackTests(TestCase):
    @classmethod
    def setUpTestData(cls) -> None:
        Item.objects.create(name="class-level", stock=1)

    def test_a_writes(self) -> None:
        Item.objects.create(name="test-a", stock=2)
        self.assertEqual(Item.objects.count(), 2)

    def test_b_sees_no_write_of_a(self) -> None:
        self.assertEqual(list(Item.objects.values_list("name", flat=True)), ["class-level"])

    def test_c_on_commit_and_savepoints(self) -> None:
        with self.captureOnCommitCallbacks(execute=True) as callbacks, transaction.atomic():
            Item.objects.create(name="in-savepoint", stock=3)
            transaction.on_commit(lambda: None)
        self.assertEqual(len(callbacks), 1)
        self.assertTrue(connection.in_atomic_block)

    def test_d_select_for_update(self) -> None:
        with transaction.atomic():
            item = Item.objects.select_for_update().get(name="class-level")
            item.stock = 5
            item.save()
        self.assertEqual(Item.objects.get(name="class-level").stock, 5)


    def test_e_borrowed_from_millpond(self) -> None:
        if settings.ENGINE_KIND != "millpond":
            self.skipTest("stock backend")
        from millpond.integrations.django import get_pool

        Item.objects.count()
        stats = get_pool().stats()
        # the test database's pool: this test's connection is its only one lent
        self.assertEqual(stats.in_use, 1)


class TransactionalTests(TransactionTestCase):
    def test_commit_is_real_and_flushed_after(self) -> None:
        Item.objects.create(name="committed", stock=1)
        self.assertEqual(Item.objects.filter(name="committed").count(), 1)
        self.assertFalse(connection.in_atomic_block)

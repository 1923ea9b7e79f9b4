\set a random(1, :accounts)
\set e random(1, :accounts - 1)
SELECT bench_payin(:a, 0, 1 + (:a + :e - 1) % :accounts);

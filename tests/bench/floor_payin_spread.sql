\set a random(1, :accounts)
\set d random(1, :accounts - 1)
\set e random(1, :accounts - 1)
SELECT floor_payin(:a, 1 + (:a + :d - 1) % :accounts, 1 + (:a + :e - 1) % :accounts);
